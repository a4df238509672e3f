"""The training curves offline: `dvc plots show --html-template configs/dvc/plots-offline.html` on the
project's own plots definition (dvc.yaml) and the train stage's CSV gives a page that loads nothing from the
network, and headless Chromium draws one visible line per loss."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from cafe.stages.train import write_plots
from tests.test_report_page import headless

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"


def test_dvc_plots_render_offline(tmp_path):
    repo = tmp_path / "repo"
    (repo / "runs" / "cafe").mkdir(parents=True)
    log = [{"step": s, "loss": 3.0 - s / 10, "loss_lm": 2.0 - s / 20, "loss_con": 1.0 - s / 30, "lr": 1e-5}
           for s in range(1, 21)]
    (repo / "runs" / "cafe" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    write_plots(repo / "runs" / "cafe")  # what the train stage writes for DVC
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=repo, check=True)
    done = subprocess.run([DVC, "plots", "show", "--html-template", ROOT / "configs" / "dvc" / "plots-offline.html",
                           "-o", "out"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = (repo / "out" / "index.html").read_text()
    assert not re.search(r"<(script|link|img)\b[^>]*\b(src|href)=[\"']?https?:", page)  # DVC's own page has 3
    assert "vegaEmbed(" in page  # DVC's plot divs, drawn by the template's own vegaEmbed

    probe = repo / "out" / "probe.html"
    probe.write_text(page.replace("</body>", """<script>
window.addEventListener('load', () => {
  const lines = [...document.querySelectorAll('svg.dvc-plot polyline')].map(l => { const r = l.getBoundingClientRect();
    return {series: l.dataset.series, w: r.width, h: r.height, points: l.points.length}; });
  const pre = document.createElement('pre'); pre.id = 'lines'; pre.textContent = JSON.stringify(lines);
  document.body.appendChild(pre); });
</script></body>"""))
    dom = headless("--dump-dom", probe.as_uri(), tmp=tmp_path)
    lines = json.loads(re.search(r"<pre id=\"lines\">(.*?)</pre>", dom, re.S).group(1).replace("&quot;", '"'))
    assert sorted(line["series"].split()[-1] for line in lines) == sorted(plots[0]["runs/cafe/plots/train.csv"]["y"])
    for line in lines:
        assert line["points"] == len(log) and line["w"] > 300 and line["h"] > 10, line
