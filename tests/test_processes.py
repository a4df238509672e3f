"""Child processes work under a long TMPDIR (Unix socket paths are limited to 107 bytes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import multiprocessing as mp, sys, torch
from torch.utils.data import DataLoader
if sys.argv[1] == "fixed":
    from cafe.processes import short_socket_dir
    short_socket_dir()
with mp.get_context("forkserver").Pool(2) as pool:
    assert pool.map(abs, [-1, -2]) == [1, 2]
batches = [b.tolist() for b in DataLoader(torch.arange(8), batch_size=4, num_workers=2)]
assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]], batches
print("ok")
"""


def _run(mode: str, tmpdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True,
                          timeout=120)


def test_pools_and_loader_workers_run_under_a_long_tmpdir(tmp_path):
    long = tmp_path / ("a-temporary-folder-with-a-long-name-" * 3)
    long.mkdir()
    assert len(str(long)) > 110
    fixed = _run("fixed", long)
    assert fixed.returncode == 0 and fixed.stdout.strip() == "ok", fixed.stderr[-2000:]
    plain = _run("plain", long)  # the control: without it the forkserver's socket path is too long
    assert plain.returncode != 0 and "too long" in plain.stderr, plain.stderr[-2000:]
