"""The CAFe objective: L = alpha_lm * L_lm + alpha_con * L_con (paper Eq. 3).

``L_con`` is the symmetric InfoNCE of paper Eq. 1 over the (global) batch of normalised image and text
embeddings. Eq. 1 as printed *sums* the image->text and text->image terms (each a mean over the batch);
the published code *averages* them. ``directions`` picks one; the default is the published "mean", so
alpha_con = 10 means what it means in the paper's released training runs.

Pairs in a batch with identical captions are not negatives of each other: their logits are removed from
both softmax denominators (each pair keeps its own positive).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F

from cafe.config import ObjectiveConfig


def caption_ids(captions: Sequence[str]) -> torch.Tensor:
    """Stable 63-bit ids of normalised captions, so duplicates can be found across ranks."""
    def one(text: str) -> int:
        digest = hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & ((1 << 63) - 1)
    return torch.tensor([one(c) for c in captions], dtype=torch.long)


def info_nce(image: torch.Tensor, text: torch.Tensor, temperature: float,
             ids: torch.Tensor | None = None, directions: str = "mean") -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned normalised embeddings ``image[i] <-> text[i]``."""
    logits = image @ text.T / temperature
    if ids is not None:
        ids = ids.to(logits.device)
        duplicate = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(duplicate, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    i2t = F.cross_entropy(logits, target)
    t2i = F.cross_entropy(logits.T, target)
    total = i2t + t2i
    return total if directions == "sum" else total / 2


def combine(losses: dict[str, torch.Tensor], cfg: ObjectiveConfig,
            scales: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted terms of Eq. 3, keyed like ``losses`` ("lm", "con"); absent terms are skipped. ``scales``:
    a loss balance's factors per term (``optim.clip_mode: balanced``), multiplied into the weights. The one
    place the weights are applied: every backward of a step goes through here (``Terms.weighted``)."""
    weights = {"lm": cfg.alpha_lm, "con": cfg.alpha_con}
    scales = scales or {}
    return {name: weights[name] * scales.get(name, 1.0) * value for name, value in losses.items()}
