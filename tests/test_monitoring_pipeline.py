"""The monitoring pipeline's branch, both ways, with KFP's local runner: a window whose feedback shows
retrieval falling starts the retraining step (here in ``record`` mode, on the window's pairs folder); an
in-distribution window does not. Either way the monitor step's first HTML output is the decision page, and
Evidently's reports are HTML outputs of their own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cafe.monitoring.reference import save_reference
from cafe.pipeline_io import MONITOR_REPORT_OUTPUTS
from cafe.serving.traffic import TrafficLog
from tests.test_monitor import _reference, _traffic

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["harmful", "same"])
def test_pipeline_retrains_only_when_quality_fell(tmp_path, monkeypatch, kind):
    from kfp import local

    from pipelines.monitoring import build

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rng = np.random.default_rng(3)
    meta, arrays, centre = _reference(rng)
    save_reference(meta, arrays, tmp_path / "reference")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for j in range(10):
        Image.new("RGB", (8, 8), (j * 20, 0, 0)).save(gallery / f"g{j}.png")
    log = TrafficLog(tmp_path / "traffic")
    if kind == "harmful":
        _traffic(log, rng, centre, 120, hit_rate=0.3, shift=1.5, top1=0.45)
    else:
        _traffic(log, rng, centre, 120, hit_rate=0.8)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "serve": {"gallery": str(gallery)},
        "monitor": {"traffic_store": str(tmp_path / "traffic"), "out": str(tmp_path / "monitor"),
                    "drift_threshold": 0.65, "drift_pca_components": None, "probe_images": 0}}))

    root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    build("python:3.11")(params_file=str(params), overrides=[], reference=str(tmp_path / "reference"),
                         model="", probe=False, retrain_mode="record", kfp_host="", training_package="")
    summaries = list(root.rglob("summary"))
    assert len(summaries) == 1
    decision = json.loads(summaries[0].read_text())["decision"]
    # what the KFP UI shows of the step: the decision page (naming the outputs of the reports), then Evidently's
    pages = list(root.rglob("decision_page"))
    assert len(pages) == 1
    page = pages[0].read_text()
    assert f"<div id='decision' class='{decision}'><b>{decision}</b>" in page and "href='report" not in page
    assert all(f"&#x27;{name}&#x27;" in page for name in MONITOR_REPORT_OUTPUTS.values())
    text, images = (next(root.rglob(name)).read_text() for name in MONITOR_REPORT_OUTPUTS.values())
    # Evidently's pages (megabytes): the queries' with its top-1 similarity drift, the images' without
    assert ("top1_score" in text, "top1_score" in images, len(images) > 100_000) == (True, False, True)
    requests = list(root.rglob("request"))
    if kind == "harmful":
        assert decision == "retrain"
        assert len(requests) == 1
        request = json.loads(requests[0].read_text())
        # 120 labelled searches, 30% chose g0.png (in the gallery); the rest chose an item not in it
        assert 0 < request["pairs_count"] < 120
        # the window's pairs: an instruction folder with the chosen image copied in, the training data_uri
        folder = Path(request["pairs"])
        records = json.loads((folder / "instructions.json").read_text())
        assert len(records) == request["pairs_count"]
        assert all(r["conversations"][1]["value"].startswith("q") for r in records)
        assert {(folder / r["image"]).read_bytes() for r in records} == {(gallery / "g0.png").read_bytes()}
        assert request["arguments"]["data_uri"] == str(folder)
    else:
        assert decision in ("ok", "warn")
        assert requests == []


def test_cafe_pipeline_compile_builds_the_monitoring_pipeline(tmp_path):
    """`cafe pipeline compile --pipeline monitoring` (what CI and users run) writes the two-step pipeline."""
    from kfp import components as kfp_components
    from typer.testing import CliRunner

    from cafe.cli import app

    out = tmp_path / "monitoring.yaml"
    result = CliRunner().invoke(app, ["pipeline", "compile", "--pipeline", "monitoring", "--image", "reg.example/cafe:1",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    component = kfp_components.load_component_from_file(str(out))
    assert component.name == "cafe-monitoring"
    assert {"params_file", "retrain_mode", "kfp_host"} <= set(component.component_spec.inputs)
    spec = yaml.safe_load(out.read_text())
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {"reg.example/cafe:1"}
    assert set(spec["deploymentSpec"]["executors"]) == {"exec-monitor", "exec-retrain"}
    artifacts = spec["components"]["comp-monitor"]["outputDefinitions"]["artifacts"]
    html = [name for name, a in artifacts.items() if a["artifactType"]["schemaTitle"] == "system.HTML"]
    assert set(html) == {"decision_page", *MONITOR_REPORT_OUTPUTS.values()}  # the page, then one per report
