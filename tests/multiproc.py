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
    """The repurposed training pairs of ``params`` as ``Trainer.fit`` data (Parquet shards, repurposed first if
    needed). Call it in the parent before spawning workers: two workers repurposing into one folder race."""
    from tests.conftest import pairs

    return pairs(params)
