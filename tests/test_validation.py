"""The validation loss on the val/ split: where it is computed, that it follows training, that it can be
off, and that under several ranks it is the one-process number."""

import json
import os

import pytest
import torch
import torch.distributed as dist

from cafe.distributed import DistEnv
from cafe.training.trainer import Trainer
from cafe.training.validation import val_batches, val_loader, validation_loss
from tests.conftest import make_adapter, pairs
from tests.multiproc import free_port, spawn


@pytest.fixture()
def val_params(params):
    params.repurpose.val_fraction = 0.25  # a val split of about 40 pairs out of 160
    cfg = params.train
    cfg.max_steps, cfg.batch_size = 6, 8
    cfg.optim.lr = cfg.optim.lr_vision = 3e-3
    cfg.optim.warmup_ratio = 0.0
    return params


def test_val_batches_cover_the_split_with_equal_rank_shares():
    assert val_batches(10, 4, 1, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    ranks = [val_batches(11, 2, 2, r) for r in range(2)]
    assert ranks == [[[0, 1], [4, 5], [8]], [[2, 3], [6, 7], [9]]]  # item 10 cannot be split over 2 ranks
    assert val_batches(1, 4, 2, 0) == []  # fewer samples than ranks


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_val_loss_is_on_the_val_split_and_follows_training(val_params, tmp_path):
    params = val_params
    train, val = pairs(params, "train"), pairs(params, "val")
    assert len(val) >= 16 and not {s.id for s, _ in val} & {s.id for s, _ in train}
    params.train.eval_every = 2
    params.train.output = str(tmp_path / "run")
    model_dir = Trainer(params.train, params, DistEnv(), progress=False).fit(
        train, lambda: make_adapter(params), val=val)

    log = _log(tmp_path / "run")
    evaluated = [r for r in log if "val_loss" in r]
    assert [r["step"] for r in evaluated] == [2, 4, 6]
    for r in evaluated:
        assert r["val_loss"] == pytest.approx(r["val_loss_lm"] + 10.0 * r["val_loss_con"], rel=1e-6)
    first, last = evaluated[0], evaluated[-1]
    assert last["val_loss"] < first["val_loss"]  # the model learns, and the validation loss sees it
    assert last["val_loss_con"] < first["val_loss_con"] - 1e-3 and last["val_loss_lm"] < first["val_loss_lm"] - 1e-3

    # the logged number is the loss of the final model on the val shards, not on the training shards
    from cafe.models import load_adapter

    adapter = load_adapter(model_dir, params.prompts, params.model)
    on_val = validation_loss(adapter, val_loader(val, params.train, DistEnv()), params.train)
    on_train = validation_loss(adapter, val_loader(torch.utils.data.Subset(train, range(len(val))), params.train,
                                                   DistEnv()), params.train)
    assert on_val == pytest.approx({k: last[k] for k in on_val}, rel=1e-4)
    assert on_train["val_loss"] != pytest.approx(last["val_loss"], rel=1e-4)  # other data, another number

    plot = json.loads((tmp_path / "run" / "val_loss.json").read_text())  # what the DVC plot shows
    assert [row["step"] for row in plot] == [2, 4, 6]
    assert plot[-1]["val_loss_con"] == last["val_loss_con"]
    assert plot[0]["train_loss"] == pytest.approx((log[0]["loss"] + log[1]["loss"]) / 2)


def test_val_loss_off_at_zero_and_validating_leaves_training_unchanged(val_params, tmp_path):
    from safetensors.torch import load_file

    params = val_params
    params.train.max_steps = 4
    train, val = pairs(params, "train"), pairs(params, "val")
    weights = {}
    for every in (0, 1):
        params.train.eval_every = every
        params.train.output = str(tmp_path / f"every{every}")
        model_dir = Trainer(params.train, params, DistEnv(), progress=False).fit(
            train, lambda: make_adapter(params), val=val)
        weights[every] = load_file(model_dir / "model.safetensors")
    assert not any("val_loss" in r for r in _log(tmp_path / "every0"))
    assert not (tmp_path / "every0" / "val_loss.json").exists()
    assert sum("val_loss" in r for r in _log(tmp_path / "every1")) == 4
    for name, tensor in weights[0].items():  # eval mode, no graph, RNG left as it was
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=0, msg=name)


def _sixteen(params):
    return torch.utils.data.Subset(pairs(params, "val"), range(16))  # two global batches of 8, nothing trimmed


def _ranks_worker(rank, port, params, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cfg = params.train.model_copy(update={"batch_size": 4})
    env = DistEnv(rank=rank, world_size=2)
    losses = validation_loss(make_adapter(params, seed=5), val_loader(_sixteen(params), cfg, env), cfg)
    if rank == 0:
        torch.save(losses, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_val_loss_under_two_ranks_is_the_one_process_loss(val_params, tmp_path):
    params = val_params
    val = _sixteen(params)  # repurposed once, before the ranks start
    whole = validation_loss(make_adapter(params, seed=5), val_loader(val, params.train, DistEnv()), params.train)
    spawn(_ranks_worker, (free_port(), params, str(tmp_path / "ranks.pt")), nprocs=2)
    ranks = torch.load(tmp_path / "ranks.pt")
    # global batches of 8 either way: 8 on one process, 4 + 4 on two ranks, averaged across them
    assert ranks == pytest.approx(whole, rel=1e-4)
