"""Trainer mechanics: data order, resume, checkpoints, clipping, learning."""

import json

import pytest
import torch

from cafe.config import OptimConfig
from cafe.data.samples import GlobalBatchSampler
from cafe.distributed import DistEnv
from cafe.training import checkpoint as ckpt
from cafe.training.optim import backward_and_clip, param_groups
from cafe.training.trainer import Trainer
from tests.conftest import make_adapter, pairs


def test_sampler_splits_global_batches_across_ranks_and_resumes():
    whole = list(GlobalBatchSampler(50, 8, world_size=1, seed=3, total_steps=12))
    ranks = [list(GlobalBatchSampler(50, 4, world_size=2, rank=r, seed=3, total_steps=12)) for r in range(2)]
    for step, batch in enumerate(whole):
        assert ranks[0][step] + ranks[1][step] == batch  # same global batch whatever the world size
        assert len(set(batch)) == 8
    assert sorted(sum(whole[:6], [])) != list(range(48))  # shuffled
    assert len(set(sum(whole[:6], []))) == 48  # an epoch has no repeats (6 steps of 8 out of 50)
    assert list(GlobalBatchSampler(50, 8, seed=3, start_step=5, total_steps=12)) == whole[5:]
    assert whole[:6] != whole[6:]  # next epoch reshuffles


def test_sampler_refuses_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="one global batch"):
        GlobalBatchSampler(10, 8, world_size=2)


def test_vision_tower_gets_its_own_learning_rate(adapter):
    groups = param_groups(adapter.model, OptimConfig(lr=1e-3, lr_vision=1e-5))
    vision = [g for g in groups if g["name"].startswith("vision")]
    assert vision and all(g["lr"] == 1e-5 for g in vision)
    assert all(g["lr"] == 1e-3 for g in groups if g["name"].startswith("llm"))
    assert sum(len(g["params"]) for g in groups) == len(list(adapter.model.parameters()))


def _terms(w):
    def term(coeffs):
        def run():
            loss = (w * torch.tensor(coeffs)).sum()
            loss.backward()
            return loss.detach()
        return run
    return {"lm": term([0.1, 0.0, 0.0]), "con": term([0.0, 30.0, 40.0])}


def test_per_loss_clipping_bounds_each_term_separately():
    w = torch.nn.Parameter(torch.ones(3))
    losses, norms = backward_and_clip(_terms(w), [w], OptimConfig(clip_mode="per_loss", clip_norm=1.0), lambda p: None)
    assert norms == pytest.approx({"lm": 0.1, "con": 50.0})
    assert losses["con"].item() == pytest.approx(70.0)
    # language gradient untouched (under the limit), contrastive scaled to norm 1
    torch.testing.assert_close(w.grad, torch.tensor([0.1, 0.6, 0.8]))
    w.grad = None
    backward_and_clip(_terms(w), [w], OptimConfig(clip_mode="global", clip_norm=1.0), lambda p: None)
    assert w.grad[0] < 0.01  # one shared clip starves the language term


def _pairs(params):
    return pairs(params)


def _configure(params, output, steps):
    params.train.output = str(output)
    params.train.max_steps = steps
    params.train.batch_size = 8
    params.train.optim.lr = params.train.optim.lr_vision = 1e-3
    params.train.optim.warmup_ratio = 0.2
    params.train.keep_last = 2
    return params.train


def test_resume_after_n_steps_equals_uninterrupted_run(params, tmp_path):
    samples = _pairs(params)
    init = lambda: make_adapter(params)  # noqa: E731
    straight = Trainer(_configure(params, tmp_path / "a", 6), params, DistEnv(), progress=False).fit(samples, init)

    cfg = _configure(params, tmp_path / "b", 6)
    Trainer(cfg, params, DistEnv(), progress=False).fit(samples, init, stop_after=3)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path / "b" / "checkpoints")] == ["checkpoint-0000003"]
    assert not (tmp_path / "b" / "model").exists()  # an interrupted run publishes no final model
    resumed = Trainer(cfg, params, DistEnv(), progress=False).fit(samples, init)

    from safetensors.torch import load_file
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    log_a = [json.loads(l) for l in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(l) for l in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == list(range(1, 7))  # no step lost or done twice
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert json.loads((resumed / "train_summary.json").read_text())["resumed_from"].endswith("checkpoint-0000003")


def test_half_written_checkpoint_is_never_picked_up(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "checkpoint-0000004").mkdir(parents=True)  # no COMPLETE marker: a crash mid-write
    (root / ".tmp-checkpoint-0000006").mkdir()
    done = root / "checkpoint-0000002"
    done.mkdir()
    (done / ckpt.COMPLETE).write_text("2")
    assert ckpt.latest_checkpoint(root) == done


def test_keep_last_prunes_old_checkpoints(tmp_path):
    root = tmp_path / "ck"
    for step in (1, 2, 3):
        ckpt.staging_dir(root, step).mkdir(parents=True)
        ckpt.finalize(root, step, keep_last=2)
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["checkpoint-0000002", "checkpoint-0000003"]


def test_both_alphas_zero_is_an_error(params, tmp_path):
    samples = _pairs(params)
    cfg = _configure(params, tmp_path / "z", 1)
    cfg.objective.alpha_lm = cfg.objective.alpha_con = 0.0
    with pytest.raises(ValueError, match="nothing to train"):
        Trainer(cfg, params, DistEnv(), progress=False).fit(samples, lambda: make_adapter(params))
