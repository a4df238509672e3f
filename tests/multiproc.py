"""Spawning test workers with a deadline: a hung collective fails the test instead of hanging CI."""

from __future__ import annotations

import socket
import time

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, args: tuple, nprocs: int = 2, timeout: float = 300.0) -> None:
    """``mp.spawn`` that kills the workers and raises after ``timeout`` seconds; worker errors re-raise."""
    ctx = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            raise TimeoutError(f"{fn.__name__}: {nprocs} workers still running after {timeout:.0f}s")


def train_pairs(params):
    """The repurposed training pairs of ``params`` as ``Trainer.fit`` data, repurposed first if needed.

    On main the pairs are Parquet shards (``tests.conftest.pairs``); before that branch is merged here they
    are a JSON-lines file. Call it in the parent before spawning workers (two workers repurposing race)."""
    try:
        from tests.conftest import pairs
    except ImportError:
        from pathlib import Path

        from cafe.data.repurpose import repurpose
        from cafe.data.samples import load_pair_samples

        if not Path(params.repurpose.out).exists():
            repurpose(params.repurpose)
        return load_pair_samples(params.repurpose.out, params.prompts.caption)
    return pairs(params)
