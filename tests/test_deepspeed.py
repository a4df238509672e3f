"""Under the DeepSpeed engine (2 gloo ranks, ZeRO-0, ZeRO-2 and ZeRO-3) gradient caching applies exactly the gradient
of the uncached step, which is the hand-averaged gradient of the DDP-style path, and so does the shared-prefix step; with
mined hard negatives (gathered across ranks like the in-batch ones) both steps apply the gradient of one process on the
whole batch; a DeepSpeed run checkpoints and resumes to the weights of an uninterrupted one.

The engine's applied gradient is read from the update of plain SGD with learning rate 1 (the update is minus
the reduced, partitioned and re-assembled gradient), so the test sees what ZeRO actually applies."""

import os

import pytest
import torch
import torch.distributed as dist

from cafe.distributed import DistEnv, average_gradients
from cafe.training.step import loss_terms
from cafe.training.strategy import DeepSpeedStrategy, build_deepspeed_ops, deepspeed_config
from tests.conftest import make_adapter
from tests.multiproc import free_port, spawn, train_pairs
from tests.test_grad_cache import _batch

pytestmark = pytest.mark.slow
# the ranks' deadline: 46 s on 2 idle cores, 234 s on 2 cores at load ~20 (2026-12-03), so 300 s was too tight
DEADLINE = 900.0


@pytest.fixture(autouse=True, scope="module")
def _extensions_built():
    """Build DeepSpeed's JIT extension in this process before the ranks start: with an empty cache the build
    takes minutes, which must not count against the workers' deadline (the ranks then only load it)."""
    build_deepspeed_ops()


def _cfg(params, chunk, step="three_pass"):
    cfg = params.train.model_copy(deep=True)
    cfg.grad_cache_chunk, cfg.step = chunk, step
    cfg.strategy = "deepspeed"
    cfg.optim.lr = cfg.optim.lr_vision = 1.0
    cfg.optim.warmup_ratio = 0.0
    cfg.optim.clip_mode = "none"
    return cfg


def _deepspeed_update(params, batch, stage, chunk, env, step="three_pass", with_losses=False):
    adapter = make_adapter(params, seed=3)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    cfg = _cfg(params, chunk, step)
    config = deepspeed_config(f"configs/deepspeed/zero{stage}.json", cfg, env)
    strategy = DeepSpeedStrategy(adapter.model, cfg, env, total_steps=1, config=config,
                                 optimizer=lambda groups: torch.optim.SGD(groups, lr=1.0))
    assert strategy.stage == stage
    losses, _ = strategy.step(loss_terms(adapter, batch, cfg, strategy.backward))
    with strategy.full_weights():
        update = {n: before[n] - p.detach() for n, p in adapter.model.named_parameters()}
    return (update, {k: float(v) for k, v in losses.items()}) if with_losses else update


def _hand_averaged(params, batch, chunk, step="three_pass"):
    adapter = make_adapter(params, seed=3)
    for run in loss_terms(adapter, batch, _cfg(params, chunk, step)).values():
        run()
    ps = list(adapter.model.parameters())
    average_gradients(ps)
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
            for n, p in adapter.model.named_parameters()}


def _join(rank, port, params):
    """Join the 2-rank gloo group as ``rank``: its ``DistEnv`` and its 6 of the 12 samples."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    env = DistEnv(rank=rank, world_size=2)
    batch = _batch(params, 6 * rank, 6 * rank + 6)
    return env, batch


def _worker(rank, port, params, out):
    env, batch = _join(rank, port, params)
    result = {"ddp": _hand_averaged(params, batch, chunk=0)}
    for stage in (0, 2, 3):
        for chunk in (0, 2):  # 2: three chunks per rank
            result[(stage, chunk)] = _deepspeed_update(params, batch, stage, chunk, env)
    # the shared-prefix step (one packed forward for both objectives) applies the same gradient
    result["ddp", "shared_prefix"] = _hand_averaged(params, batch, chunk=0, step="shared_prefix")
    for stage in (2, 3):
        for chunk in (0, 2):
            result[stage, chunk, "shared_prefix"] = _deepspeed_update(params, batch, stage, chunk, env, "shared_prefix")
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def _assert_close(got, want, what):
    moved = 0
    for name, ref in want.items():
        scale = ref.abs().max().item()
        err = (got[name] - ref).abs().max().item()
        assert err <= 1e-4 * scale + 1e-6, (what, name, err, scale)
        moved += int(scale > 0)
    assert moved > 10, what


def test_grad_cache_is_exact_under_zero0_zero2_and_zero3(params, tmp_path):
    train_pairs(params)
    out = tmp_path / "rank0.pt"
    spawn(_worker, (free_port(), params, str(out)), nprocs=2, timeout=DEADLINE)
    r = torch.load(out, weights_only=False)
    for stage in (0, 2, 3):
        _assert_close(r[(stage, 2)], r[(stage, 0)], f"ZeRO-{stage} cached vs uncached")
        _assert_close(r[(stage, 0)], r["ddp"], f"ZeRO-{stage} vs hand-averaged gradients")
    _assert_close(r["ddp", "shared_prefix"], r["ddp"], "shared-prefix vs three-pass, 2 ranks")
    for stage in (2, 3):
        for chunk in (0, 2):
            _assert_close(r[stage, chunk, "shared_prefix"], r[(stage, 0)], f"ZeRO-{stage} shared-prefix chunk {chunk}")


def _negatives_worker(rank, port, params, out):
    env, batch = _join(rank, port, params)
    assert "negative_mask" in batch  # the pairs carry their mined negatives
    result = {}
    for step in ("three_pass", "shared_prefix"):
        for stage, chunk in ((2, 0), (3, 0), (3, 2)):
            update, losses = _deepspeed_update(params, batch, stage, chunk, env, step, with_losses=True)
            gathered = [None, None]
            dist.all_gather_object(gathered, losses)
            result[step, stage, chunk] = update, gathered
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def test_mined_negatives_under_deepspeed_equal_one_process(params, tmp_path):
    """Mined negatives, hardness-weighted, 2 ranks of 6 samples, ZeRO-2/3, cached (chunks of 2) and not, both
    steps: the applied gradient is the one-process gradient on all 12 samples, the contrastive loss on each rank
    is the one-process loss, and the ranks' language losses average to it."""
    from tests.test_mining_loss import _mined

    train_pairs(params)
    _mined(params, tmp_path)  # in the parent: the ranks read the shards
    params.train.objective.hardness = 1.0
    out = tmp_path / "rank0.pt"
    spawn(_negatives_worker, (free_port(), params, str(out)), nprocs=2, timeout=DEADLINE)
    r = torch.load(out, weights_only=False)
    batch = _batch(params, 0, 12)
    adapter = make_adapter(params, seed=3)
    reference = {name: float(run()) for name, run in loss_terms(adapter, batch, _cfg(params, 0)).items()}
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach()
             for n, p in adapter.model.named_parameters()}
    plain = {k: v for k, v in batch.items() if not k.startswith("negative_")}
    without = float(loss_terms(make_adapter(params, seed=3), plain, _cfg(params, 0))["con"]())
    assert abs(without - reference["con"]) > 1e-3  # the negatives take part
    for (step, stage, chunk), (update, losses) in r.items():
        what = f"{step} ZeRO-{stage} chunk {chunk} with negatives"
        _assert_close(update, grads, what)
        for rank_losses in losses:
            assert rank_losses["con"] == pytest.approx(reference["con"], rel=1e-5), what
        assert sum(x["lm"] for x in losses) / 2 == pytest.approx(reference["lm"], rel=1e-5), what


def _fit_worker(rank, port, params, root):
    from cafe.distributed import init_distributed
    from cafe.training.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    env = init_distributed("gloo")
    samples = train_pairs(params)
    init = lambda: make_adapter(params)  # noqa: E731
    cfg = params.train
    cfg.strategy, cfg.deepspeed_config = "deepspeed", "configs/deepspeed/zero3.json"
    cfg.max_steps, cfg.batch_size, cfg.grad_cache_chunk = 4, 4, 2
    cfg.optim.lr = cfg.optim.lr_vision = 1e-3
    cfg.output = f"{root}/straight"
    Trainer(cfg, params, env, progress=False).fit(samples, init)
    cfg.output = f"{root}/resumed"
    Trainer(cfg, params, env, progress=False).fit(samples, init, stop_after=2)
    Trainer(cfg, params, env, progress=False).fit(samples, init)
    dist.destroy_process_group()


def test_deepspeed_zero3_run_checkpoints_and_resumes(params, tmp_path):
    import json

    from safetensors.torch import load_file

    train_pairs(params)
    spawn(_fit_worker, (free_port(), params, str(tmp_path)), nprocs=2, timeout=DEADLINE)
    ck = tmp_path / "resumed" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-0000002", "checkpoint-0000004"]
    assert (ck / "checkpoint-0000002" / "deepspeed").is_dir()  # the engine's partitions, one file per rank
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    make_adapter(params).save_pretrained(tmp_path / "init")
    initial = load_file(tmp_path / "init" / "model.safetensors")
    moved = 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
        moved += int(not torch.equal(a[key], initial[key]))
    assert moved > len(a) // 2
    log = [json.loads(line) for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
