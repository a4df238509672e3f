"""Zero-shot image-text retrieval, Flickr30K/COCO protocol (Karpathy split files).

Image->text: an image is a hit at K if any of its captions is among the K most similar captions.
Text->image: each caption is a hit at K if its image is among the K most similar images.
Ties count against the query (a tied wrong item ranks ahead), so a constant model scores chance or worse.

Similarities are computed ``chunk`` query rows at a time, so 5K images x 25K captions needs memory for one
``chunk x 25K`` block, not the whole 5K x 25K matrix. The per-query ranks are kept: they are the per-item
results the gate's bootstrap resamples.
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
    for n, entry in enumerate(data.get("images", [])):
        if split and entry.get("split", split) != split:
            continue
        if "filename" not in entry or not entry.get("sentences"):
            raise ValueError(f"{path}: images[{n}] needs 'filename' and a non-empty 'sentences' list")
        folder = entry.get("filepath", "")
        images.append(str(path.parent / folder / entry["filename"]))
        for sentence in entry["sentences"]:
            captions.append(sentence["raw"])
            owner.append(len(images) - 1)
    if not images:
        raise ValueError(f"{path}: no images with split {split!r}")
    return images, captions, owner


def _rank_of_best(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """0-based rank of the best positive in each row (ties ranked pessimistically)."""
    best = scores.masked_fill(~positive, float("-inf")).max(dim=1).values
    return ((scores >= best[:, None]) & ~positive).sum(dim=1)


def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: list[int] | torch.Tensor,
                    chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of the first correct item for every image query (over captions) and every caption
    query (over images)."""
    owner = torch.as_tensor(text_to_image, dtype=torch.long)
    n_img = image_emb.shape[0]
    i2t_rank = torch.empty(n_img, dtype=torch.long)
    for lo in range(0, n_img, chunk):
        scores = image_emb[lo:lo + chunk] @ text_emb.T
        positive = owner[None, :] == torch.arange(lo, min(lo + chunk, n_img))[:, None]
        i2t_rank[lo:lo + chunk] = _rank_of_best(scores, positive)
        del scores, positive
    t2i_rank = torch.empty(len(owner), dtype=torch.long)
    for lo in range(0, len(owner), chunk):
        scores = text_emb[lo:lo + chunk] @ image_emb.T
        positive = torch.zeros_like(scores, dtype=torch.bool)
        positive[torch.arange(scores.shape[0]), owner[lo:lo + chunk]] = True
        t2i_rank[lo:lo + chunk] = _rank_of_best(scores, positive)
        del scores, positive
    return i2t_rank, t2i_rank


def recall_from_ranks(i2t_rank, t2i_rank, ks=(1, 5, 10)) -> dict[str, float]:
    """R@K both ways from 0-based ranks."""
    i2t, t2i = torch.as_tensor(i2t_rank), torch.as_tensor(t2i_rank)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = float((i2t < k).float().mean()) if len(i2t) else float("nan")
        out[f"t2i_R@{k}"] = float((t2i < k).float().mean()) if len(t2i) else float("nan")
    return out


def recall_at_k(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: list[int] | torch.Tensor,
                ks: list[int] = (1, 5, 10), chunk: int = 1024) -> dict[str, float]:
    """R@K both ways from normalised embeddings; similarities computed ``chunk`` rows at a time."""
    return recall_from_ranks(*retrieval_ranks(image_emb, text_emb, text_to_image, chunk), ks)


def modality_gap(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Liang et al. (2022): norm of the difference between the modality centroids."""
    return float((image_emb.mean(0) - text_emb.mean(0)).norm())


def text_to_image_examples(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: list[int],
                           images: list[str], captions: list[str], count: int = 6, k: int = 5) -> list[dict]:
    """``count`` caption queries spread evenly over the set, each with its ``k`` most similar images, the
    right image and its 0-based rank (for the report's example retrievals)."""
    if not captions:
        return []
    picks = sorted({round(i * (len(captions) - 1) / max(count - 1, 1)) for i in range(count)})
    owner = torch.as_tensor(text_to_image, dtype=torch.long)
    scores = text_emb[picks] @ image_emb.T
    ranks = retrieval_ranks(image_emb, text_emb[picks], owner[picks])[1]
    top = scores.topk(min(k, image_emb.shape[0]), dim=1)
    return [{"query": captions[q], "answer": images[int(owner[q])], "rank": int(rank),
             "top": [{"image": images[int(i)], "score": round(float(s), 4)} for s, i in zip(ss, ii)]}
            for q, rank, ss, ii in zip(picks, ranks, top.values, top.indices)]
