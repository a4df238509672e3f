"""Process-group helpers: one process, or several under ``torchrun`` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    attempt: int = 0  # which start of the job this process group is (0, then +1 after each torchrun restart)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str = "auto") -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    attempt = 0
    if world > 1 and not dist.is_initialized():
        store, rank, _ = next(dist.rendezvous("env://"))
        attempt = _attempt(store, world)
        dist.init_process_group(backend=("nccl" if cuda else "gloo") if backend == "auto" else backend,
                                store=dist.PrefixStore(f"cafe/attempt{attempt}", store), rank=rank, world_size=world)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device, attempt=attempt)


def _attempt(store: dist.Store, world: int) -> int:
    """Count the job's starts in its rendezvous store, so each gets its own key prefix.

    torchrun keeps its agent's store across ``--max-restarts`` restarts; the process group's keys of the
    previous start (peer addresses) are then still there, and gloo connects to a dead peer and fails.
    Every rank adds 1 when it joins, and a start only begins once every process of the previous one is gone,
    so ``(count - 1) // world`` is the same number on all ranks of one start. (TORCHELASTIC_RESTART_COUNT is
    not: a node whose own workers did not fail restarts without counting a retry.)"""
    return (store.add(f"cafe/joined/{world}", 1) - 1) // world


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, concatenated in rank order; gradients flow back to each rank's own rows."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, without gradient (ids, metrics)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of every gradient across ranks, in one flattened all-reduce per dtype."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for g, synced in zip(group, _unflatten_dense_tensors(flat, group)):
            g.copy_(synced)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
