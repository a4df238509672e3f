"""Nearest-neighbour search for mining: exact top-k in blocks (bounded memory), or a faiss IVF index beyond
``mine.exact_limit`` pairs, whose recall is measured against exact search on a sample of queries.

Embeddings are L2-normalised, so inner product is cosine similarity. The exact search holds one
``chunk x chunk`` block of scores and the running top-k of one chunk of queries at a time: memory is
``O(chunk^2 + chunk * k)`` whatever the number of pairs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm


def exact_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 4096,
               progress: bool = False, desc: str = "search") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, indices)``, each ``[len(queries), k]``, the ``k`` keys of highest inner product per query in
    descending order; the same as ``torch.topk`` over the whole score matrix (up to the order of exact ties)."""
    k = min(k, len(keys))
    scores = torch.empty(len(queries), k, dtype=torch.float32)
    indices = torch.empty(len(queries), k, dtype=torch.long)
    keys = keys.float()
    for lo in tqdm(range(0, len(queries), chunk), desc=desc, unit="block", disable=not progress, leave=False,
                   mininterval=1.0):
        q = queries[lo:lo + chunk].float()
        best_s = torch.full((len(q), 0), -math.inf)
        best_i = torch.empty((len(q), 0), dtype=torch.long)
        for klo in range(0, len(keys), chunk):
            block = q @ keys[klo:klo + chunk].T
            top = block.topk(min(k, block.shape[1]), dim=1)
            s = torch.cat([best_s, top.values], dim=1)
            i = torch.cat([best_i, top.indices + klo], dim=1)
            merged = s.topk(min(k, s.shape[1]), dim=1)
            best_s, best_i = merged.values, i.gather(1, merged.indices)
        scores[lo:lo + len(q)], indices[lo:lo + len(q)] = best_s, best_i
    return scores, indices


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_index(keys: torch.Tensor, nlist: int = 0, nprobe: int = 32, seed: int = 0):
    """A faiss inverted-file index (inner product) over ``keys``, trained on a sample of them; ``nlist`` 0 =
    about ``4 sqrt(n)`` lists."""
    try:
        import faiss
    except ImportError:
        raise ImportError("mine.index=faiss needs faiss: pip install 'cafe[mining]' (faiss-cpu)") from None
    x = np.ascontiguousarray(keys.float().numpy())
    n, dim = x.shape
    nlist = nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(x[np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False)])
    index.add(x)
    index.nprobe = min(nprobe, nlist)
    return index


def faiss_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, nlist: int = 0, nprobe: int = 32,
               seed: int = 0, index=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate ``(scores, indices)`` from :func:`faiss_index` (built here unless ``index`` is given)."""
    index = index if index is not None else faiss_index(keys, nlist, nprobe, seed)
    scores, indices = index.search(np.ascontiguousarray(queries.float().numpy()), min(k, len(keys)))
    return torch.from_numpy(scores), torch.from_numpy(indices).long()


def recall(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of the exact top-k indices that the approximate top-k also found (mean over queries)."""
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(sum(hits) / max(1, exact.numel()))


def search(queries: torch.Tensor, keys: torch.Tensor, k: int, method: str = "auto", exact_limit: int = 100_000,
           chunk: int = 4096, nlist: int = 0, nprobe: int = 32, seed: int = 0, progress: bool = False,
           desc: str = "search", recall_sample: int = 1000) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Top-k by ``method`` ("exact", "faiss", or "auto": exact up to ``exact_limit`` keys); returns the scores,
    the indices and what was used (``{"index", "recall"}``: recall against exact search on ``recall_sample``
    random queries for faiss, 1.0 for exact)."""
    if method == "auto":
        method = "exact" if len(keys) <= exact_limit or not faiss_available() else "faiss"
    if method == "exact":
        scores, indices = exact_topk(queries, keys, k, chunk, progress, desc)
        return scores, indices, {"index": "exact", "recall": 1.0}
    if method != "faiss":
        raise ValueError(f"mine.index {method!r}: use auto, exact or faiss")
    scores, indices = faiss_topk(queries, keys, k, nlist, nprobe, seed)
    pick = torch.from_numpy(np.random.default_rng(seed).choice(len(queries), min(recall_sample, len(queries)),
                                                               replace=False))
    _, truth = exact_topk(queries[pick], keys, k, chunk)
    return scores, indices, {"index": "faiss", "recall": recall(indices[pick], truth), "recall_queries": len(pick)}
