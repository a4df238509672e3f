"""Fault tolerance: checkpoints in the object store (newest complete one wins, half-written ones never do, the
last K kept), a data order that resumes across restarts and a change in the number of ranks or loader
workers, and workers killed mid-run under torchrun (one node with 2 processes; 2 simulated nodes with c10d
rendezvous) resuming with no step lost or done twice."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from cafe.config import save_params
from cafe.data.samples import GlobalBatchSampler
from cafe.distributed import DistEnv
from cafe.storage import open_store
from cafe.training import checkpoint as ckpt
from cafe.training.trainer import Trainer
from tests.conftest import make_adapter
from tests.multiproc import free_port, train_pairs


def _configure(params, output, steps=6, batch=8):
    t = params.train
    t.output, t.max_steps, t.batch_size, t.save_every, t.keep_last = str(output), steps, batch, 2, 2
    t.optim.lr = t.optim.lr_vision = 1e-3
    t.optim.warmup_ratio = 0.2
    return t


def _weights(model_dir):
    return load_file(model_dir / "model.safetensors")


def _log(output):
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------- data order
def test_data_order_resumes_across_a_change_in_ranks_and_loader_workers():
    steps = 14
    one = list(GlobalBatchSampler(50, 12, world_size=1, seed=5, total_steps=steps))
    for world in (2, 3, 4):  # 2 ranks up to step 5, then `world` ranks: the same global batches
        first = [list(GlobalBatchSampler(50, 6, 2, r, seed=5, total_steps=5)) for r in range(2)]
        rest = [list(GlobalBatchSampler(50, 12 // world, world, r, seed=5, start_step=5, total_steps=steps))
                for r in range(world)]
        joined = [sum((f[s] for f in first), []) for s in range(5)] + \
                 [sum((r[s] for r in rest), []) for s in range(steps - 5)]
        assert joined == one, world
    # loader worker processes change nothing: the batch sampler alone decides the order
    data = list(range(50))
    batches = {w: [b.tolist() for b in DataLoader(data, batch_sampler=GlobalBatchSampler(50, 12, seed=5, total_steps=steps),
                                                  num_workers=w)] for w in (0, 2)}
    assert batches[0] == batches[2] == one


# ----------------------------------------------------------------- object store
def test_checkpoints_in_s3_resume_from_the_newest_complete_one(params, tmp_path, s3_uri):
    samples = train_pairs(params)
    init = lambda: make_adapter(params)  # noqa: E731
    straight = Trainer(_configure(params, tmp_path / "a"), params, DistEnv(), progress=False).fit(samples, init)

    cfg = _configure(params, tmp_path / "b")
    cfg.checkpoint_store = s3_uri
    Trainer(cfg, params, DistEnv(), progress=False).fit(samples, init, stop_after=3)
    store = open_store(s3_uri)
    assert ckpt.StoreCheckpoints(s3_uri).latest_step() == 3
    # a node died while uploading step 5: files, no COMPLETE marker; and the pod's local disk is gone
    store.put_bytes("checkpoint-0000005/trainer_state.pt", b"half")
    import shutil
    shutil.rmtree(tmp_path / "b" / "checkpoints")

    resumed = Trainer(cfg, params, DistEnv(), progress=False).fit(samples, init)
    assert json.loads((resumed / "train_summary.json").read_text())["resumed_from"].endswith("checkpoint-0000003")
    a, b = _weights(straight), _weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    assert [r["step"] for r in _log(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]
    names = sorted({k.split("/")[0] for k in store.list("checkpoint-")})
    assert names == ["checkpoint-0000004", "checkpoint-0000006"]  # keep_last 2; the half-written one dropped
    assert store.exists("checkpoint-0000006/COMPLETE") and store.exists("checkpoint-0000006/model.safetensors")


def test_a_base_model_in_the_object_store_trains_like_its_local_copy(params, tmp_path, s3_uri):
    """A PyTorchJob gets train.base_model as an s3:// URI (the pipeline's artifact); the trainer fetches it."""
    samples = train_pairs(params)
    base = tmp_path / "base"
    make_adapter(params, seed=4).save_pretrained(base)
    open_store(s3_uri).put_dir("", base)
    local = Trainer(_configure(params, tmp_path / "a", 2), params, DistEnv(), progress=False).fit(samples, str(base))
    remote = Trainer(_configure(params, tmp_path / "b", 2), params, DistEnv(), progress=False).fit(samples, s3_uri)
    a, b = _weights(local), _weights(remote)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    with pytest.raises(FileNotFoundError, match="nothing stored"):
        Trainer(_configure(params, tmp_path / "c", 2), params, DistEnv(), progress=False).fit(
            samples, s3_uri.rstrip("/") + "-absent")


# ----------------------------------------------------------------- killed workers
def _prepare(params, tmp_path, steps=5):
    samples = train_pairs(params)
    base = tmp_path / "base"
    make_adapter(params).save_pretrained(base)
    params.train.base_model = str(base)
    reference = Trainer(_configure(params, tmp_path / "one", steps), params, DistEnv(), progress=False).fit(
        samples, lambda: make_adapter(params))
    _configure(params, tmp_path / "two", steps, batch=4)  # 2 ranks x 4 = the same global batch of 8
    save_params(params, tmp_path / "params.yaml")
    return reference, ["-m", "cafe.cli", "train", "-p", str(tmp_path / "params.yaml")]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd(), "CAFE_FAULT_AT_STEP": "3",
            "CAFE_FAULT_RANK": "1", **extra}


def _launch(arg_lists, cwd, timeout=300):
    """Start one torchrun launcher per argument list (each in its own session) and wait for all; on a
    timeout or error kill every launcher's whole process group, workers included."""
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--monitor-interval=0.2", *args],
                              cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for args in arg_lists]
    try:
        return procs, [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _check_resumed(reference, output, steps=5):
    log = _log(output)
    assert [r["step"] for r in log] == list(range(1, steps + 1))  # no step lost or done twice
    # steps 1-2 ran in the first attempt; 3.. again after the restart, from checkpoint 2 (step 3 was lost)
    assert [r["attempt"] for r in log] == [0, 0] + [1] * (steps - 2)
    summary = json.loads((output / "model" / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-0000002")
    a, b = _weights(reference), _weights(output / "model")
    for key in a:  # two processes equal one on the same global batch, up to float summation order
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_killed_worker_under_torchrun_resumes_from_the_last_checkpoint(params, tmp_path):
    reference, train = _prepare(params, tmp_path)
    (proc,), (out,) = _launch([["--standalone", "--nproc_per_node=2", "--max-restarts=1", *train]], tmp_path)
    assert proc.returncode == 0, out[-3000:]
    assert "exitcode: -9" in out  # the agent saw the SIGKILL and restarted
    _check_resumed(reference, tmp_path / "two")


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous_resume_from_the_store(params, tmp_path, s3_uri):
    reference, train = _prepare(params, tmp_path)
    endpoint = f"127.0.0.1:{free_port()}"
    node = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id=cafe-{tmp_path.name}", "--max-restarts=1", *train, "-s", f"train.checkpoint_store={s3_uri}"]
    nodes, outs = _launch([node, node], tmp_path)
    for p, out in zip(nodes, outs):
        assert p.returncode == 0, out[-3000:]
    _check_resumed(reference, tmp_path / "two")
    assert ckpt.StoreCheckpoints(s3_uri).latest_step() == 5
