"""The evaluation report as a person sees it: rendered by headless Chromium (Debian's ``chromium``), the
headline block, the example retrievals' thumbnails and the thumbnail beside each example reply have visible,
non-zero boxes; the page needs no network.

In CI (``CI=true``) a missing Chromium fails the test (.ci/run installs it); elsewhere it skips."""

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from cafe.evaluation.report import write_report
from tests.eval_runs import evaluation_folder, mmstar_replies

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
               replies: all('#replies .reply'), reply_thumbs: all('#replies img.thumb'),
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


# the example replies: 2 wrong + 2 right captions, a wrong and a right POPE answer, MMStar's wrong answer about a
# base64 image (no file: a named placeholder), its wrong and right ones about img0.png; each about its own image
REPLIES = [{"id": f"img{i}.png", "part": "captions", "image": f"img{i}.png", "prompt": "Describe the image briefly.",
            "reply": f"a {COLOURS[i]} circle.", "parsed": [f"{COLOURS[i]} circle"], "correct": i % 2 == 0}
           for i in range(1, 5)] + \
    [{"id": i, "part": "pope", "image": f"img{i}.png", "prompt": "Is there a circle in the image?", "reply": r,
      "parsed": r.lower().rstrip("."), "correct": r == "Yes."} for i, r in ((5, "No."), (6, "Yes."))] + \
    [{**mmstar_replies("B")[0], "image": "<base64>"}, *mmstar_replies("BA", "img0.png")]
# the picked ones with an image file, in the page's order (per part: wrong ones first)
SHOWN = [("wrong", "img1.png"), ("wrong", "img3.png"), ("right", "img2.png"), ("right", "img4.png"),
         ("wrong", "img5.png"), ("right", "img6.png"), ("wrong", "img0.png"), ("right", "img0.png")]


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
        examples = [{"query": f"a {COLOURS[q]} circle.", "answer": str(images[q]), "rank": 0 if name == "cafe" else 3,
                     "top": [{"image": str(images[(q + j) % len(images)]), "score": 0.9 - j / 10} for j in range(5)]}
                    for q in range(3)]
        examples.append({"query": "a black circle.", "answer": str(images[6]), "rank": 5,
                         "top": [{"image": str(images[j]), "score": 0.5} for j in range(5)]})
        folders[name] = evaluation_folder(
            tmp_path / name, correct, {"i2t_R@1": r1, "t2i_R@1": r1 - 0.05, "object_f1": 0.5, "pope_avg_f1": 0.8},
            REPLIES, {"retrieval_examples": examples, "reply_images": {part: str(images[0].parent)
                                                                        for part in ("captions", "pope", "mmstar")}})
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
    retrievals, replies = (text.split(f"<section id='{s}'>")[1].split("</section>")[0] for s in ("retrievals", "replies"))
    assert retrievals.count("<img class='thumb'") == 3 * 5 + 5 + 1  # 3 queries found, one missed plus its right image
    # every example reply beside the thumbnail of its own image (the base64 one: a placeholder with its name)
    assert re.findall(r"<div class='reply (\w+)'><figure[^>]*><img class='thumb' alt='([^']+)'", replies) == SHOWN
    assert replies.count("<div class='thumb missing'>&lt;base64&gt;</div>") == 1
    thumb = {alt: src for alt, src in re.findall(r"<img class='thumb' alt='([^']+)' src='([^']+)'", retrievals)}
    assert all(f"alt='{name}' src='{thumb[name]}'" in replies for _, name in SHOWN)  # the same images, embedded
    assert retrievals.count("<figure class='right") == 3 + 1
    assert "Gate FAILED: 1 of 2 checks failed (mmstar_accuracy)" in text
    cards = re.findall(r"<div class='card (\w+)'>", text)
    assert cards[0] == "pass" and "fail" in cards and "none" in cards  # i2t_R@1 passed, MMStar failed, rest unchecked
    assert "<span class='before'>0.100</span> → <span class='value'>0.700</span>" in text
    table = text.split("<h2>Headline as a table</h2>")[1].split("</thead>")[0]  # the headline's own columns
    assert re.findall(r"<th>([^<]*)</th>", table) == ["area", "metric", "base", "cafe [95% CI]", "change", "gate"]
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
    assert len(boxes["replies"]) == 9 and len(boxes["reply_thumbs"]) == 8  # one reply without an image file
    for thumb in boxes["reply_thumbs"]:
        assert thumb["visible"] and thumb["w"] >= 60 and thumb["h"] >= 60 and thumb["natural"] > 0, thumb
    assert boxes["verdict"][0]["w"] > 0 and boxes["headline"][0]["y"] < boxes["thumbs"][0]["y"]  # headline first
    assert boxes["thumbs"][-1]["y"] < boxes["reply_thumbs"][0]["y"]  # retrievals, then replies
    assert boxes["width"] <= boxes["viewport"]  # nothing forces a horizontal scroll
    headless(f"--screenshot={tmp_path / 'report.png'}", page.as_uri(), tmp=tmp_path)
    assert (tmp_path / "report.png").stat().st_size > 10_000
