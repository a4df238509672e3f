"""The monitor's decision page: the decision and its reasons first, each signal, and working links to the
Evidently reports beside it; rendered in headless Chromium with a visible decision box. In the KFP step's
outputs the page is the first HTML output and names the output holding each report."""

import html
import json
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from cafe.config import MonitorConfig
from cafe.monitoring.monitor import monitor
from cafe.monitoring.page import decision_page
from cafe.pipeline_io import MONITOR_REPORT_OUTPUTS, monitor_outputs
from cafe.serving.traffic import TrafficLog
from tests.test_monitor import _reference, _traffic
from tests.test_report_page import headless


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])


@pytest.fixture(scope="module")
def harmful(tmp_path_factory):
    """One monitor run on a harmful shift (Evidently takes most of a minute, so these tests are slow;
    tests/test_monitor.py checks the page's links in its own run): its summary and folder."""
    tmp_path = tmp_path_factory.mktemp("monitor")
    rng = np.random.default_rng(0)
    meta, arrays, centre = _reference(rng)
    log = TrafficLog(tmp_path / "traffic")
    _traffic(log, rng, centre, 120, hit_rate=0.3, shift=1.5, top1=0.45)
    cfg = MonitorConfig(drift_method="model", drift_threshold=0.65, min_requests=50, min_feedback=30,
                        drift_pca_components=None)
    summary = monitor(log.read_window(hours=1), meta, arrays, cfg, tmp_path / "out", probe={"R@5": 0.7, "MRR": 0.5},
                      model_version="cafe-v1")
    return summary, tmp_path / "out"


@pytest.mark.slow
def test_the_page_says_the_decision_and_why_and_links_the_reports(harmful):
    summary, out = harmful
    assert summary["decision"] == "retrain" and summary["page"] == "decision.html"
    assert json.loads((out / "summary.json").read_text())["page"] == "decision.html"
    page = (out / "decision.html").read_text()
    assert "<div id='decision' class='retrain'><b>retrain</b>" in page
    reasons = page.split("<ul id='reasons'>")[1].split("</ul>")[0]
    for reason in summary["reasons"]:  # every reason, in the summary's order
        assert html.escape(reason) in reasons
    assert page.index("id='reasons'") < page.index("<h2>Signals</h2>") < page.index("id='reports'")
    links = Links()
    links.feed(page)
    assert {"report.html", "report_images.html", "summary.json"} <= set(links.hrefs)
    assert all((out / href).is_file() for href in links.hrefs)  # relative links to files beside the page
    assert not re.search(r"(src|href)=['\"]https?:", page)
    assert "feedback R@5" in page and "modality gap" in page and "cafe-v1" in page


def _small_window() -> dict:
    return {"decision": "ok", "reasons": [], "not_judged": ["feedback: 5 labelled queries < monitor.min_feedback=30"],
            "at": "2026-01-01T00:00:00+00:00", "window": {"records": 5}, "reports": {},
            "signals": {"embedding_drift": {"text": {"judged": False, "n": 5}}, "top1_drift": {"judged": False, "n": 5},
                        "feedback": {"n": 5, "judged": False, "recall": 0.2, "upper": 0.6, "reference": 0.8},
                        "modality_gap": {"value": None, "reference": 0.5, "change": None},
                        "invalid": {"count": 0, "total": 5, "fraction": 0.0}},
            "thresholds": MonitorConfig().model_dump(mode="json"),
            "modality_gap_history": [{"modality_gap": 0.5}, {"modality_gap": 0.6}, {"modality_gap": 0.55}]}


def test_a_small_window_says_what_was_not_judged_and_that_no_report_exists():
    page = decision_page(_small_window())
    assert "<b>ok</b>0 reasons" in page and "no signal crossed its threshold" in page
    assert "5 labelled queries" in page.split("id='not-judged'")[1]
    assert "no Evidently report: the window was too small" in page
    assert "<svg id='gap-history'" in page and page.count(",") > 3


@pytest.mark.slow
def test_headless_chromium_shows_the_decision(harmful, tmp_path):
    page = harmful[1] / "decision.html"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", """<script>
window.addEventListener('load', () => { const r = document.querySelector('#decision').getBoundingClientRect();
  const pre = document.createElement('pre'); pre.id = 'box';
  pre.textContent = JSON.stringify({w: r.width, h: r.height, y: r.y,
    colour: getComputedStyle(document.querySelector('#decision')).backgroundColor});
  document.body.appendChild(pre); });
</script></body>"""))
    dom = headless("--dump-dom", probe.as_uri(), tmp=tmp_path)
    box = json.loads(re.search(r"<pre id=\"box\">(.*?)</pre>", dom, re.S).group(1).replace("&quot;", '"'))
    assert box["w"] > 300 and box["h"] > 30 and box["y"] < 200, box  # near the top, large
    assert box["colour"] == "rgb(251, 224, 224)"  # retrain's red


def _outputs(tmp_path, summary: dict, folder) -> dict[str, str]:
    """What the KFP monitor step writes into its HTML outputs for ``summary`` (artifacts as KFP hands them over:
    a local ``path`` and the ``uri`` the UI lists)."""
    art = {name: SimpleNamespace(path=str(tmp_path / "kfp" / name), uri=f"minio://mlpipeline/run/{name}")
           for name in ("decision_page", *MONITOR_REPORT_OUTPUTS.values())}
    monitor_outputs(summary, folder, art["decision_page"], {n: art[n] for n in MONITOR_REPORT_OUTPUTS.values()})
    return {name: (tmp_path / "kfp" / name).read_text() for name in art}


def test_the_kfp_step_shows_the_decision_page_and_names_the_output_of_each_report(tmp_path):
    summary = {**_small_window(), "decision": "retrain", "reasons": ["feedback R@5 fell"],
               "reports": {"text": "report.html", "image": "report_images.html"}}
    (tmp_path / "report.html").write_text("<html>evidently: text queries</html>")
    (tmp_path / "report_images.html").write_text("<html>evidently: query images</html>")
    written = _outputs(tmp_path, summary, tmp_path)
    page = written["decision_page"]
    assert "<div id='decision' class='retrain'><b>retrain</b>" in page and "feedback R@5 fell" in page
    links = Links()
    links.feed(page)
    assert links.hrefs == []  # KFP shows each HTML output alone: a relative link would go nowhere
    reports = page.split("<ul id='reports'>")[1].split("</ul>")[0]
    assert "text queries: this step&#x27;s HTML output &#x27;evidently_text&#x27; (minio://mlpipeline/run/evidently_text)" \
        in reports and "&#x27;evidently_images&#x27;" in reports and "&#x27;summary&#x27;" in reports
    assert written["evidently_text"] == "<html>evidently: text queries</html>"
    assert written["evidently_images"] == "<html>evidently: query images</html>"


def test_the_kfp_step_says_why_a_report_output_is_empty(tmp_path):
    written = _outputs(tmp_path, _small_window(), tmp_path)  # 5 requests: no Evidently report
    assert "<b>ok</b>0 reasons" in written["decision_page"]
    assert "no Evidently report: the window was too small" in written["decision_page"]
    assert "text queries: 5 requests in the window, fewer than monitor.min_requests=" in written["evidently_text"]
    assert "The decision (ok)" in written["evidently_images"]
    off = {key: value for key, value in _small_window().items() if key != "reports"}  # monitor.report false
    written = _outputs(tmp_path, off, tmp_path)
    assert "monitor.report is off" in written["decision_page"] and "monitor.report is off" in written["evidently_text"]
