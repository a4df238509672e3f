"""`cafe train` under torchrun with two gloo processes equals one process on the same global batch."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from cafe.config import save_params
from cafe.data.repurpose import repurpose
from tests.conftest import make_adapter

pytestmark = pytest.mark.slow


def _run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torchrun_two_processes_match_one(params, tmp_path):
    repurpose(params.repurpose)
    base = tmp_path / "base"
    make_adapter(params).save_pretrained(base)
    params.train.base_model = str(base)
    params.train.max_steps = 4
    params.train.optim.lr = params.train.optim.lr_vision = 1e-3
    save_params(params, tmp_path / "params.yaml")

    one = ["-m", "cafe.cli", "train", "-p", str(tmp_path / "params.yaml"), "-s", f"train.output={tmp_path / 'one'}",
           "-s", "train.batch_size=8"]
    _run([sys.executable, *one], tmp_path)
    two = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "cafe.cli", "train", "-p", str(tmp_path / "params.yaml"), "-s", f"train.output={tmp_path / 'two'}",
           "-s", "train.batch_size=4"]
    _run([sys.executable, *two], tmp_path)

    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    initial = load_file(base / "model.safetensors")
    moved = 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)
        moved += int(not torch.equal(a[key], initial[key]))
    assert moved > len(a) // 2  # training actually changed the weights
