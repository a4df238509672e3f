"""Zero-shot image-text retrieval, Flickr30K/COCO protocol (Karpathy split files).

Image->text: an image is a hit at K if any of its captions is among the K most similar captions.
Text->image: each caption is a hit at K if its image is among the K most similar images.
Ties count against the query (a tied wrong item ranks ahead), so a constant model scores chance or worse.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def load_karpathy(path: str | Path, split: str = "test") -> tuple[list[str], list[str], list[int]]:
    """Image paths, captions, and the image index of each caption, from a Karpathy-split JSON."""
    path = Path(path)
    data = json.loads(path.read_text())
    images, captions, owner = [], [], []
    for entry in data["images"]:
        if split and entry.get("split", split) != split:
            continue
        folder = entry.get("filepath", "")
        images.append(str(path.parent / folder / entry["filename"]))
        for sentence in entry["sentences"]:
            captions.append(sentence["raw"])
            owner.append(len(images) - 1)
    return images, captions, owner


def _rank_of_best(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """0-based rank of the best positive in each row (ties ranked pessimistically)."""
    best = scores.masked_fill(~positive, float("-inf")).max(dim=1).values
    return ((scores >= best[:, None]) & ~positive).sum(dim=1)


def recall_at_k(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: list[int] | torch.Tensor,
                ks: list[int] = (1, 5, 10), chunk: int = 1024) -> dict[str, float]:
    """R@K both ways from normalised embeddings; similarities computed ``chunk`` rows at a time."""
    owner = torch.as_tensor(text_to_image, dtype=torch.long)
    n_img = image_emb.shape[0]
    i2t_rank = torch.empty(n_img, dtype=torch.long)
    for lo in range(0, n_img, chunk):
        scores = image_emb[lo:lo + chunk] @ text_emb.T
        positive = owner[None, :] == torch.arange(lo, min(lo + chunk, n_img))[:, None]
        i2t_rank[lo:lo + chunk] = _rank_of_best(scores, positive)
    t2i_rank = torch.empty(len(owner), dtype=torch.long)
    for lo in range(0, len(owner), chunk):
        scores = text_emb[lo:lo + chunk] @ image_emb.T
        positive = torch.zeros_like(scores, dtype=torch.bool)
        positive[torch.arange(scores.shape[0]), owner[lo:lo + chunk]] = True
        t2i_rank[lo:lo + chunk] = _rank_of_best(scores, positive)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = float((i2t_rank < k).float().mean())
        out[f"t2i_R@{k}"] = float((t2i_rank < k).float().mean())
    return out


def modality_gap(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Liang et al. (2022): norm of the difference between the modality centroids."""
    return float((image_emb.mean(0) - text_emb.mean(0)).norm())
