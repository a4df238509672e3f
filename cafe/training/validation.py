"""The validation loss: L_lm, L_con and their weighted sum on the held-out ``val/`` split.

The terms are the training step's own (``cafe.training.step.loss_terms``), run without a graph and with a
backward that does nothing, so the validation loss is the quantity the training loss is, on other data.
The split is cut in order into global batches of ``batch_size x world size`` (the last one shorter, trimmed
to a multiple of the world size); each rank reads its rows, and L_con is InfoNCE over the gathered global
batch as in training (a split smaller than one global batch therefore ranks among fewer candidates).
Each term is averaged over the batches, weighted by their sizes, then across ranks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.utils.data import DataLoader, Dataset

from cafe.config import TrainConfig
from cafe.data.samples import collate
from cafe.distributed import DistEnv
from cafe.models.adapter import VLMAdapter
from cafe.objective import combine
from cafe.processes import short_socket_dir
from cafe.training.step import loss_terms


def val_batches(num_samples: int, batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """This rank's index lists: every rank gets the same number of batches, of equal size within a batch."""
    batches = []
    step = batch_size * world_size
    for lo in range(0, num_samples, step):
        size = min(step, num_samples - lo) // world_size
        if size:
            start = lo + rank * size
            batches.append(list(range(start, start + size)))
    return batches


def val_loader(data: Dataset, cfg: TrainConfig, dist: DistEnv) -> DataLoader | None:
    """The validation batches of this rank, or None when the split has fewer samples than ranks."""
    batches = val_batches(len(data), cfg.batch_size, dist.world_size, dist.rank)
    if not batches:
        return None
    if cfg.num_workers:
        short_socket_dir()
    return DataLoader(data, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers)


def validation_loss(adapter: VLMAdapter, loader: DataLoader, cfg: TrainConfig,
                    autocast: AbstractContextManager | None = None) -> dict[str, float]:
    """``{"val_loss": weighted total, "val_loss_lm": L_lm, "val_loss_con": L_con}`` (the terms that are on),
    averaged across ranks. The model is in eval mode meanwhile (no dropout) and the RNG streams are left as
    they were, so validating does not change the training that follows."""
    cfg = cfg.model_copy(update={"grad_cache_chunk": 0, "step": "three_pass"})  # one forward per term
    model = adapter.model
    was_training = model.training
    sums: dict[str, torch.Tensor] = {}
    count = 0
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), autocast or nullcontext():
            for batch in loader:
                n = len(batch["ids"])
                for name, run in loss_terms(adapter, batch, cfg, backward=lambda _: None).items():
                    sums[name] = sums.get(name, 0) + run().detach().float() * n
                count += n
    finally:
        model.train(was_training)
    names = sorted(sums)
    means = torch.stack([sums[k] for k in names]) / count
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(means)
        means /= torch.distributed.get_world_size()
    losses = dict(zip(names, means))
    weighted = combine(losses, cfg.objective)
    return {"val_loss": float(sum(weighted.values())), **{f"val_loss_{k}": float(v) for k, v in losses.items()}}
