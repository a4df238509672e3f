"""The CAFe objective: L = alpha_lm * L_lm + alpha_con * L_con (paper Eq. 3).

``L_con`` is the symmetric InfoNCE of paper Eq. 1 over the (global) batch of normalised image and text
embeddings. Eq. 1 as printed *sums* the image->text and text->image terms (each a mean over the batch);
the published code *averages* them. ``directions`` picks one; the default is the published "mean", so
alpha_con = 10 means what it means in the paper's released training runs.

Pairs in a batch with identical captions are not negatives of each other: their logits are removed from
both softmax denominators (each pair keeps its own positive). Mined hard negatives (``train.negatives``) add
each sample's own negatives to its two denominators.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F

from cafe.config import ObjectiveConfig


def normalise_caption(text: str) -> str:
    """The form in which two captions count as the same: lower case, single spaces."""
    return " ".join(text.lower().split())


def caption_ids(captions: Sequence[str]) -> torch.Tensor:
    """Stable 63-bit ids of normalised captions, so duplicates can be found across ranks."""
    def one(text: str) -> int:
        digest = hashlib.blake2b(normalise_caption(text).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & ((1 << 63) - 1)
    return torch.tensor([one(c) for c in captions], dtype=torch.long)


def info_nce(image: torch.Tensor, text: torch.Tensor, temperature: float,
             ids: torch.Tensor | None = None, directions: str = "mean", negative_text: torch.Tensor | None = None,
             negative_image: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None,
             hardness: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned normalised embeddings ``image[i] <-> text[i]``.

    Mined hard negatives (``[B, n, d]``, ``cafe mine``) join each sample's own denominators: ``negative_text[i]``
    image i's (image->text), ``negative_image[i]`` text i's (text->image); ``negative_mask`` marks the real ones
    (a pair with fewer mined negatives is padded): ``[B, n]`` for both directions, or ``[B, 2, n]`` with the
    text negatives' mask first (attribute-swap captions often have more texts than images). ``hardness`` > 0 scales every negative's term by
    ``exp(hardness * similarity)`` (detached; LLaVE's hardness weighting), the positive's left as it is."""
    logits = image @ text.T / temperature
    eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    if ids is not None:
        ids = ids.to(logits.device)
        logits = logits.masked_fill((ids[:, None] == ids[None, :]) & ~eye, float("-inf"))
    rows = {"i2t": [logits], "t2i": [logits.T]}
    for k, (name, queries, negatives) in enumerate((("i2t", image, negative_text), ("t2i", text, negative_image))):
        if negatives is None:
            continue
        extra = torch.einsum("bd,bnd->bn", queries, negatives) / temperature
        if negative_mask is not None:
            mask = negative_mask if negative_mask.dim() == 2 else negative_mask[:, k]
            extra = extra.masked_fill(~mask.to(extra.device), float("-inf"))
        rows[name].append(extra)
    target = torch.arange(len(logits), device=logits.device)
    total = torch.zeros((), device=logits.device)
    for parts in rows.values():
        scores = torch.cat(parts, dim=1)
        if hardness:
            # log of the weight exp(hardness * cosine) on every negative; -inf (masked) entries stay -inf
            weight = (hardness * temperature * scores.detach()).nan_to_num(0.0, posinf=0.0, neginf=0.0)
            weight[:, :len(logits)].masked_fill_(eye, 0.0)
            scores = scores + weight
        total = total + F.cross_entropy(scores, target)
    return total if directions == "sum" else total / 2


def combine(losses: dict[str, torch.Tensor], cfg: ObjectiveConfig,
            scales: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted terms of Eq. 3, keyed like ``losses`` ("lm", "con"); absent terms are skipped. ``scales``:
    a loss balance's factors per term (``optim.clip_mode: balanced``), multiplied into the weights. The one
    place the weights are applied: every backward of a step goes through here (``Terms.weighted``)."""
    weights = {"lm": cfg.alpha_lm, "con": cfg.alpha_con}
    scales = scales or {}
    return {name: weights[name] * scales.get(name, 1.0) * value for name, value in losses.items()}
