"""The main job's wiring, end to end on a very small world (the real run is `make demo`)."""

import json

import pytest
from typer.testing import CliRunner

from cafe.cli import app
from cafe.config import save_params

pytestmark = pytest.mark.slow


def test_demo_runs_every_stage_and_caches_the_base(params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params.synth.out = "data/shapes"
    params.synth.train_images, params.synth.retrieval_images, params.synth.probe_images = 64, 12, 3
    params.repurpose.input = "data/shapes/train/instructions.json"
    params.repurpose.image_root = "data/shapes/train"
    params.repurpose.out = "data/pairs"
    params.pretrain.data = "data/shapes/train/instructions.json"
    params.pretrain.steps, params.pretrain.batch_size = 3, 8
    params.pretrain.vision_steps, params.pretrain.vision_batch_size = 3, 8
    params.train.data, params.train.output = "data/pairs", "runs/cafe"
    params.train.max_steps, params.train.batch_size = 3, 8
    params.evaluate.data = "data/shapes/eval"
    save_params(params, "params.yaml")

    runner = CliRunner()
    first = runner.invoke(app, ["demo"])
    # three training steps cannot meet the demo's targets: the command says so with exit 1
    assert first.exit_code == 1, first.output
    assert "base model vs CAFe" in first.output and "i2t_R@1" in first.output
    base = json.loads((tmp_path / "metrics" / "base" / "metrics.json").read_text())
    cafe = json.loads((tmp_path / "metrics" / "cafe" / "metrics.json").read_text())
    assert base.keys() == cafe.keys() and "object_f1" in cafe
    assert "| i2t_R@1 |" in (tmp_path / "reports" / "demo.md").read_text()

    second = runner.invoke(app, ["demo"])
    assert "pretrain: models/base/model is current" in second.output
    assert "evaluate base: metrics/base is current" in second.output
