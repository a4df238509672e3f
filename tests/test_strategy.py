"""The DeepSpeed JSON configs in the repository, filled from the training config."""

import json
from pathlib import Path

import pytest

from cafe.config import TrainConfig
from cafe.distributed import DistEnv
from cafe.training.strategy import DDPStrategy, build_strategy, deepspeed_config

CONFIGS = sorted(Path("configs/deepspeed").glob("*.json"))


def test_repository_has_zero_0_2_3_and_offload_configs():
    assert {p.stem for p in CONFIGS} == {"zero0", "zero2", "zero3", "zero2_offload", "zero3_offload"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_auto_fields_are_filled_from_the_training_config(path):
    cfg = TrainConfig(batch_size=6)
    cfg.optim.clip_norm = 0.5
    ds = deepspeed_config(path, cfg, DistEnv(world_size=4))
    stage = json.loads(path.read_text())["zero_optimization"]["stage"]
    assert ds["zero_optimization"]["stage"] == stage == int(path.stem[4])
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (6, 24)
    assert ds["gradient_accumulation_steps"] == 1 and ds["managed_gradient_accumulation"] is False
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False  # CPU: fp32 (bf16 "auto" means bf16 on a GPU)
    if "offload" in path.stem:
        assert ds["optimizer"]["params"]["lr"] == cfg.optim.lr
        assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "auto" not in json.dumps(ds)


def test_a_config_that_accumulates_on_its_own_is_refused(tmp_path):
    path = tmp_path / "gas.json"
    path.write_text(json.dumps({"gradient_accumulation_steps": 4, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        deepspeed_config(path, TrainConfig(), DistEnv())
    with pytest.raises(FileNotFoundError, match="configs/deepspeed"):
        deepspeed_config(tmp_path / "missing.json", TrainConfig(), DistEnv())


def test_strategy_is_chosen_by_config(adapter):
    assert isinstance(build_strategy(adapter.model, TrainConfig(), DistEnv(), 10), DDPStrategy)
    with pytest.raises(ValueError, match="deepspeed_config"):
        build_strategy(adapter.model, TrainConfig(strategy="deepspeed"), DistEnv(), 10)
