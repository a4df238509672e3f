"""What every CAFe step builds on, shared by the three-pass step (``cafe.training.step``) and the shared-prefix
step (``cafe.training.shared_prefix``): the term type, the one place the objective's weights are applied
(:class:`Terms`), the contrastive loss of the global batch from a rank's embeddings, chunk spans and the RNG
replay that gradient caching needs."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch

from cafe.config import ObjectiveConfig, TrainConfig
from cafe.distributed import gather, gather_with_grad
from cafe.objective import caption_ids, combine, info_nce

Term = Callable[[], torch.Tensor]  # runs forward + backward of one weighted term; returns the unweighted loss
Backward = Callable[[torch.Tensor], None]  # back-propagates a scalar


def plain_backward(tensor: torch.Tensor) -> None:
    tensor.backward()


class Terms(dict):
    """A step's terms (name -> :data:`Term`, run in order) and how they combine.

    ``weighted(lm=..., con=...)`` is what every backward of the step back-propagates: the objective's weights
    (and a loss balance's ``scales``, see ``cafe.training.optim``) are applied there and nowhere else.
    ``separate``: each term must leave its own gradient (per-loss clipping runs them with the gradients
    cleared in between); otherwise a step may back-propagate all terms in one backward of their sum.
    Both are read when the terms run, so the optimizer may set them after the terms are built."""

    def __init__(self, objective: ObjectiveConfig, separate: bool):
        super().__init__()
        self.objective, self.separate = objective, separate
        self.scales: dict[str, float] = {}

    def weighted(self, **losses: torch.Tensor) -> torch.Tensor:
        return sum(combine(losses, self.objective, self.scales).values())


def contrastive_loss(embeddings: Sequence[torch.Tensor], batch: dict, cfg: TrainConfig) -> torch.Tensor:
    """L_con of the global batch from this rank's ``[image, text(, negative text, negative image)]``
    embeddings: every part gathered across ranks with gradient, the in-batch duplicates masked, each sample's
    mined negatives (if any) in its own denominators. Both steps compute their loss here."""
    obj = cfg.objective
    image, text = embeddings[:2]
    ids = gather(caption_ids(batch["captions"]).to(image.device))
    negatives = {}
    if len(embeddings) > 2:
        mask = batch["negative_mask"].to(image.device)
        n, dim = mask.shape[-1], image.shape[1]
        negatives = {"negative_text": gather_with_grad(embeddings[2]).view(-1, n, dim),
                     "negative_image": gather_with_grad(embeddings[3]).view(-1, n, dim),
                     "negative_mask": gather(mask)}
    return info_nce(gather_with_grad(image), gather_with_grad(text), obj.temperature, ids, obj.directions,
                    hardness=obj.hardness, **negatives)


def cached_surrogate(chunk: Sequence[torch.Tensor], leaves: Sequence[torch.Tensor], lo: int, hi: int,
                     negatives: int) -> torch.Tensor:
    """``sum(embedding * cached gradient)`` of samples ``[lo, hi)``'s re-embedded parts (ordered as
    :func:`contrastive_loss` takes them) against the gradients on the whole batch's detached ``leaves``; the
    negative parts hold ``negatives`` rows per sample."""
    rows = [(lo, hi)] * 2 + [(lo * negatives, hi * negatives)] * (len(chunk) - 2)
    return sum((part * leaf.grad[a:b]).sum() for part, leaf, (a, b) in zip(chunk, leaves, rows))


def token_weights(targets: torch.Tensor, average: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of the labelled next-token targets (in ``targets[targets != -100]`` order) and the local count
    they are normalised by (``objective.lm_average``): "token", every token 1, over the answer tokens;
    "sample", each token 1 / its sample's answer length, over the samples that have an answer."""
    keep = targets != -100
    if average == "token":
        return torch.ones(int(keep.sum()), device=targets.device), keep.sum()
    if average != "sample":
        raise ValueError(f"lm_average must be 'token' or 'sample', got {average!r}")
    per_row = keep.sum(dim=1, keepdim=True)
    return (1.0 / per_row.clamp(min=1)).expand_as(keep)[keep], (per_row > 0).sum()


def spans(n: int, chunk: int) -> list[tuple[int, int]]:
    size = chunk if 0 < chunk < n else n
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def rng_snapshot(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextmanager
def replay(state: tuple, device: torch.device):
    """Run the block under a recorded RNG state, leaving the outer RNG stream untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield
