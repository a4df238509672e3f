"""The stage functions themselves (cafe/stages/): what the register stage stores for every orchestrator, the
gate stage's choice of reference, and the pretrain stage's cache of the base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cafe.monitoring.reference import fetch_reference
from cafe.registry import Registry, RegistryError
from cafe.stages.evaluate import evaluate
from cafe.stages.gate import gate
from cafe.stages.promote import promote
from cafe.stages.register import register


@pytest.fixture()
def evaluated(params, adapter, tmp_path):
    """A saved tiny model, its evaluation (retrieval only) and a passing gate against itself."""
    params.evaluate.parts, params.evaluate.cache_dir, params.evaluate.report = ["retrieval"], "", False
    params.gate.floors, params.gate.max_regression = {"i2t_R@1": 0.0}, {"i2t_R@1": 1.0}
    params.gate.resamples = 50
    params.registry.store = str(tmp_path / "registry")
    params.monitor.probe = str(Path(params.evaluate.data) / "retrieval_karpathy.json")
    params.monitor.probe_images, params.monitor.reference_images = 10, 30
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "data_version.json").write_text(json.dumps({"sha256": "d" * 64}))
    adapter.save_pretrained(tmp_path / "model")
    evaluate(params, tmp_path / "model", tmp_path / "eval")
    return params, tmp_path


def test_register_stores_per_item_results_and_the_monitor_reference(evaluated):
    params, tmp = evaluated
    verdict = gate(params, tmp / "eval", tmp / "gate", base=tmp / "eval" / "metrics.json")
    assert verdict["passed"] and verdict["reference"] == f"file {tmp / 'eval' / 'metrics.json'}"
    numbers = json.loads((tmp / "gate" / "metrics.json").read_text())  # what `dvc metrics show` lists
    assert numbers == {"passed": 1, "checks": verdict["summary"]["total"], "failed": 0}
    record = register(params, tmp / "model", tmp / "eval", tmp / "gate", data_version=str(tmp / "pairs"),
                      record_out=tmp / "record.json", card_out=tmp / "card.md")
    assert {"per_item.npz", "metrics.json", "gate.json", "README.md", "monitor/reference.json",
            "monitor/reference.npz", "config.json"} <= set(record["files"])
    assert record["data_version"] == "d" * 64 and record["parent"] == params.train.base_model
    assert json.loads((tmp / "record.json").read_text())["version"] == 1
    assert "# cafe v1" in (tmp / "card.md").read_text()
    meta, arrays, _ = fetch_reference(Registry(params.registry.store), "cafe", "candidate")  # `cafe monitor` reads it
    assert meta["validation"]["images"] == 30 and arrays["image_embeddings"].shape == (30, meta["dim"])

    # once a version holds the production alias, the gate compares with it instead of the base
    promote(params, 1)
    again = gate(params, tmp / "eval", tmp / "gate2", base=tmp / "eval" / "metrics.json")
    assert again["reference"] == "registry cafe v1 (production)"
    assert gate(params, tmp / "eval", tmp / "gate3", base=tmp / "eval", production=False)["reference"].startswith("file ")


def test_register_refuses_a_failed_gate_before_building_anything(evaluated):
    params, tmp = evaluated
    (tmp / "gate").mkdir()
    (tmp / "gate" / "gate.json").write_text(json.dumps({"passed": False, "checks": [{"metric": "x", "passed": False}]}))
    with pytest.raises(RegistryError, match="the gate did not pass"):
        register(params, tmp / "model", tmp / "eval", tmp / "gate", data_version=str(tmp / "pairs"))
    assert Registry(params.registry.store).list("cafe") == []


def test_pretrain_stage_reuses_a_current_base_and_rebuilds_a_changed_one(params, tmp_path):
    from cafe.stages.pretrain import is_current, pretrain

    params.pretrain.data = str(Path(params.synth.out) / "train" / "instructions.json")
    params.pretrain.output = str(tmp_path / "base")
    params.pretrain.steps, params.pretrain.batch_size, params.pretrain.save_every = 2, 4, 0
    params.pretrain.vision_steps, params.pretrain.vision_batch_size = 1, 4
    params.synth.image_size = 64
    assert not is_current(params)
    model = pretrain(params, resume=False)
    weights = model / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert is_current(params) and pretrain(params) == model and weights.stat().st_mtime_ns == stamp  # cached
    params.pretrain.steps = 3
    assert not is_current(params)
    pretrain(params, resume=False)
    assert weights.stat().st_mtime_ns != stamp and is_current(params)
