"""False-negative rules: which nearest neighbours of a pair may serve as its hard negatives.

For the query pair ``i`` (its image for image->text, its caption for text->image) every candidate pair ``j``
is dropped by the first rule that matches, in this order (``mine.rules`` picks which are on):

- ``self``: ``j == i``, the positive itself (always on);
- ``caption``: the same normalised caption (lower case, single spaces: ``cafe.objective.caption_ids``), so
  pair ``j``'s text describes ``i``'s image too;
- ``image_hash``: the same image bytes (``image_sha256`` of the shards);
- ``near_duplicate``: images within ``mine.near_duplicate_distance`` bits of pHash (the repurpose stage's
  near-duplicate measure);
- ``margin``: a score above ``positive score - mine.margin``: a candidate scoring about as high as the positive
  is more likely an unlabelled match than a negative;
- ``rank_range``: outside the sampling window ``mine.rank_range`` (neighbour ranks ``[lo, hi)``).

The survivors are ranked by score; the ``k`` hardest are kept, or with a window ``k`` drawn at random from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ORDER = ("self", "caption", "image_hash", "near_duplicate", "margin", "rank_range")
KEEP = -1  # reason code of a surviving candidate
NOT_FOUND = -2  # an approximate index returned fewer than ``mine.candidates`` neighbours (index -1)


@dataclass
class PairKeys:
    """What the rules compare, one entry per pair: caption id, image-hash id, 64-bit pHash (or None)."""

    caption: np.ndarray  # int64
    image: np.ndarray  # int64 (an id per distinct image_sha256)
    phash: np.ndarray | None = None  # uint64

    @classmethod
    def build(cls, captions: list[str], image_sha256: list[str], phash: list[int] | None = None) -> "PairKeys":
        from cafe.objective import caption_ids

        ids = {sha: n for n, sha in enumerate(dict.fromkeys(image_sha256))}
        return cls(caption_ids(captions).numpy(), np.array([ids[s] for s in image_sha256], dtype=np.int64),
                   None if phash is None else np.array(phash, dtype=np.uint64))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance between 64-bit hashes (broadcast)."""
    x = np.ascontiguousarray(np.bitwise_xor(a, b).astype(np.uint64))
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def reasons(query: np.ndarray, candidates: np.ndarray, scores: np.ndarray, positive: np.ndarray, keys: PairKeys,
            rules: list[str], margin: float, distance: int, rank_range: tuple[int, int] | None) -> np.ndarray:
    """``[n, C]`` int8: for each candidate the index in :data:`ORDER` of the first rule dropping it, or
    :data:`KEEP`. ``query`` ``[n]`` pair indices, ``candidates`` ``[n, C]`` pair indices sorted by descending
    ``scores``, ``positive`` ``[n]`` the query's score with its own pair."""
    out = np.full(candidates.shape, KEEP, dtype=np.int8)
    out[candidates < 0] = NOT_FOUND  # the rules below only change KEEP entries, so a -1 is never compared
    q = query[:, None]

    def mark(name: str, hit: np.ndarray) -> None:
        out[(out == KEEP) & hit] = ORDER.index(name)

    mark("self", candidates == q)
    if "caption" in rules:
        mark("caption", keys.caption[candidates] == keys.caption[q])
    if "image_hash" in rules:
        mark("image_hash", keys.image[candidates] == keys.image[q])
    if "near_duplicate" in rules:
        if keys.phash is None:
            raise ValueError("mine.rules has near_duplicate but no pHash was computed for the pairs")
        mark("near_duplicate", hamming(keys.phash[candidates], keys.phash[q]) <= distance)
    if "margin" in rules:
        mark("margin", scores > positive[:, None] - margin)
    if rank_range is not None:
        rank = np.arange(candidates.shape[1])[None, :]
        mark("rank_range", (rank < rank_range[0]) | (rank >= rank_range[1]))
    return out


def select(candidates: np.ndarray, scores: np.ndarray, why: np.ndarray, k: int, sample: bool,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)`` ``[n, k]`` of the kept negatives per query, hardest first (``-1`` / NaN pad a
    query with fewer than ``k`` survivors); ``sample``: ``k`` drawn at random from the survivors."""
    n = len(candidates)
    out_i = np.full((n, k), -1, dtype=np.int64)
    out_s = np.full((n, k), np.nan, dtype=np.float32)
    for row in range(n):
        keep = np.flatnonzero(why[row] == KEEP)
        if sample and len(keep) > k:
            keep = np.sort(rng.choice(keep, size=k, replace=False))
        keep = keep[:k]
        out_i[row, :len(keep)] = candidates[row, keep]
        out_s[row, :len(keep)] = scores[row, keep]
    return out_i, out_s


def count(why: np.ndarray, selected: np.ndarray) -> dict[str, int]:
    """Candidates per outcome: dropped by each rule, ``kept`` (selected), ``unused`` (survived, beyond k),
    ``not_found`` (slots an approximate index left empty)."""
    counts = {name: int((why == code).sum()) for code, name in enumerate(ORDER)}
    counts["not_found"] = int((why == NOT_FOUND).sum())
    kept = int((selected >= 0).sum())
    counts["kept"] = kept
    counts["unused"] = int((why == KEEP).sum()) - kept
    return counts


def mine_direction(top: tuple[torch.Tensor, torch.Tensor], positive: torch.Tensor, keys: PairKeys, k: int,
                   rules: list[str], margin: float, distance: int, rank_range: tuple[int, int] | None,
                   seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """One direction's negatives from its search result ``top`` (scores, indices ``[n, C]``); returns indices,
    scores and :func:`count`."""
    scores, cand = (t.numpy() for t in top)
    why = reasons(np.arange(len(cand)), cand, scores, positive.numpy(), keys, rules, margin, distance, rank_range)
    idx, sc = select(cand, scores, why, k, rank_range is not None, np.random.default_rng(seed))
    return idx, sc, count(why, idx)
