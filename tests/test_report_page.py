"""The evaluation report as a person sees it: rendered by headless Chromium (Debian's ``chromium``), the
headline block and the example thumbnails have visible, non-zero boxes; the page needs no network.

In CI (``CI=true``) a missing Chromium fails the test (.ci/run installs it); elsewhere it skips."""

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cafe.evaluation.per_item import PerItem
from cafe.evaluation.report import write_report

COLOURS = ["red", "green", "blue", "orange", "purple", "brown", "black"]

# appended to a copy of the page: once loaded (images decoded), the boxes of what must be seen go into the DOM
PROBE = """<script>
window.addEventListener('load', () => {
  const box = el => { const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return {w: r.width, h: r.height, x: r.x, y: r.y, natural: el.naturalWidth || 0,
            visible: s.visibility !== 'hidden' && s.display !== 'none' && Number(s.opacity) > 0,
            cls: el.closest('figure, .card') ? el.closest('figure, .card').className : ''}; };
  const all = sel => [...document.querySelectorAll(sel)].map(box);
  const out = {headline: all('#headline'), cards: all('#headline .card'), thumbs: all('#retrievals img.thumb'),
               verdict: all('#verdict'), width: document.documentElement.scrollWidth, viewport: innerWidth};
  const pre = document.createElement('pre'); pre.id = 'boxes'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium package (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); CI requires it")


def headless(*args: str, tmp) -> str:
    """Chromium's output for ``args``. Its profile and TMPDIR go to a short folder under /tmp: under a long
    TMPDIR it aborts ("Socket path too long" for its singleton socket)."""
    short = tempfile.mkdtemp(prefix="chromium-", dir="/tmp" if os.access("/tmp", os.W_OK) else None)
    try:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={Path(short) / 'profile'}", "--window-size=1200,900", "--virtual-time-budget=10000",
               *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": short})
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture()
def runs(tmp_path):
    """base and cafe evaluation folders: headline metrics, per-item results, a failed gate, example
    retrievals pointing at real images, replies."""
    images = []
    for i, colour in enumerate(COLOURS):
        img = Image.new("RGB", (96, 96), "grey")
        ImageDraw.Draw(img).ellipse((20, 20, 76, 76), fill=colour)
        images.append(tmp_path / "world" / f"img{i}.png")
        images[-1].parent.mkdir(exist_ok=True)
        img.save(images[-1])
    folders = {}
    for name, r1, correct in (("base", 0.1, [1] * 30 + [0] * 10), ("cafe", 0.7, [1] * 10 + [0] * 30)):
        folder = tmp_path / name
        folder.mkdir()
        items = PerItem()
        items.add("mmstar", {"categories": ["all"]}, correct=np.array(correct, dtype=np.int8),
                  category=np.zeros(40, dtype=np.int16), valid=np.ones(40, dtype=np.int8))
        items.save(folder / "per_item.npz")
        metrics = {"i2t_R@1": r1, "t2i_R@1": r1 - 0.05, "object_f1": 0.5, "pope_avg_f1": 0.8, **items.metrics()}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        examples = [{"query": f"a {COLOURS[q]} circle.", "answer": str(images[q]), "rank": 0 if name == "cafe" else 3,
                     "top": [{"image": str(images[(q + j) % len(images)]), "score": 0.9 - j / 10} for j in range(5)]}
                    for q in range(3)]
        examples.append({"query": "a black circle.", "answer": str(images[6]), "rank": 5,
                         "top": [{"image": str(images[j]), "score": 0.5} for j in range(5)]})
        (folder / "details.json").write_text(json.dumps({"retrieval_examples": examples}))
        replies = [{"id": i, "part": "mmstar", "image": "img0.png", "prompt": "Q?\nOptions: A: x, B: y", "reply": r,
                    "parsed": r, "correct": r == "A"} for i, r in enumerate(["A", "B"])]
        (folder / "replies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in replies))
        folders[name] = folder
    (folders["cafe"] / "gate.json").write_text(json.dumps({"passed": False, "intervals": {}, "checks": [
        {"metric": "mmstar_accuracy", "kind": "regression", "value": 0.25, "ci": [0.1, 0.4], "threshold": -0.05,
         "passed": False, "message": "dropped"},
        {"metric": "i2t_R@1", "kind": "floor", "value": 0.7, "ci": [0.6, 0.8], "threshold": 0.3, "passed": True,
         "message": ""}]}))
    return folders


def test_the_page_is_self_contained_and_marks_the_right_images(runs):
    md, page = write_report(runs, runs["cafe"])
    text = page.read_text()
    assert not re.search(r"(src|href)=['\"]?https?:", text)  # every image is a data URI
    assert text.count("<img class='thumb'") == 3 * 5 + 5 + 1  # 3 queries found, one missed plus its right image
    assert text.count("<figure class='right") == 3 + 1
    assert "Gate FAILED: 1 of 2 checks failed (mmstar_accuracy)" in text
    cards = re.findall(r"<div class='card (\w+)'>", text)
    assert cards[0] == "pass" and "fail" in cards and "none" in cards  # i2t_R@1 passed, MMStar failed, rest unchecked
    assert "<span class='before'>0.100</span> → <span class='value'>0.700</span>" in text
    report = md.read_text()
    assert report.index("Gate FAILED") < report.index("## Headline") < report.index("## Example retrievals") \
        < report.index("## Metrics")
    assert "| a red circle. | img0.png | 4 → 1 | **img0.png**, img1.png" in report


def test_headless_chromium_shows_the_headline_and_the_thumbnails(runs, tmp_path):
    _, page = write_report(runs, runs["cafe"])
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = headless("--dump-dom", probe.as_uri(), tmp=tmp_path)
    found = re.search(r"<pre id=\"boxes\">(.*?)</pre>", dom, re.S)
    assert found, dom[-2000:]
    boxes = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(boxes["headline"]) == 1 and boxes["headline"][0]["h"] > 50 and boxes["headline"][0]["w"] > 300
    assert len(boxes["cards"]) == 6  # R@1 both ways, object F1, POPE F1, MMStar, its invalid rate
    for card in boxes["cards"]:
        assert card["visible"] and card["w"] > 100 and card["h"] > 50, card
    assert {c["cls"].split()[-1] for c in boxes["cards"]} == {"pass", "fail", "none"}
    assert len(boxes["thumbs"]) == 21
    for thumb in boxes["thumbs"]:
        assert thumb["visible"] and thumb["w"] >= 60 and thumb["h"] >= 60 and thumb["natural"] > 0, thumb
    assert boxes["verdict"][0]["w"] > 0 and boxes["headline"][0]["y"] < boxes["thumbs"][0]["y"]  # headline first
    assert boxes["width"] <= boxes["viewport"]  # nothing forces a horizontal scroll
    headless(f"--screenshot={tmp_path / 'report.png'}", page.as_uri(), tmp=tmp_path)
    assert (tmp_path / "report.png").stat().st_size > 10_000
