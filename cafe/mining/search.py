"""Nearest-neighbour search for mining: exact top-k in blocks (bounded memory) up to ``mine.exact_limit`` pairs,
a faiss index beyond (HNSW by default, IVF selectable), whose recall is measured against exact search on a
sample of queries and raised to ``mine.recall_target`` by searching wider before every query is searched.

Embeddings are L2-normalised, so inner product is cosine similarity. The exact search holds one
``chunk x chunk`` block of scores and the running top-k of one chunk of queries at a time: memory is
``O(chunk^2 + chunk * k)`` whatever the number of pairs.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe.config import MineConfig

log = logging.getLogger(__name__)
MAX_BREADTH = 4096  # the widest HNSW efSearch tried while raising recall (IVF: every list)


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


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("mine.index hnsw / ivf needs faiss: pip install 'cafe[mining]' (faiss-cpu), "
                          "or set mine.index: exact") from None
    return faiss


def build_index(keys: torch.Tensor, kind: str, cfg: MineConfig):
    """A faiss inner-product index over ``keys``: ``hnsw`` (a graph of ``mine.hnsw_m`` links per node; no
    training) or ``ivf`` (``mine.nlist`` lists, 0 = about ``4 sqrt(n)``, trained on a sample of the keys).
    Its search breadth starts at ``mine.ef_search`` / ``mine.nprobe``."""
    faiss = _faiss()
    x = np.ascontiguousarray(keys.float().numpy())
    n, dim = x.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.add(x)
    elif kind == "ivf":
        nlist = cfg.nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x[np.random.default_rng(cfg.seed).choice(n, size=min(n, 64 * nlist), replace=False)])
        index.add(x)
    else:
        raise ValueError(f"mine.index {kind!r}: use auto, exact, hnsw or ivf")
    set_breadth(index, cfg.ef_search if kind == "hnsw" else cfg.nprobe)
    return index


def breadth(index) -> int:
    """How widely ``index`` searches: HNSW's efSearch, IVF's nprobe."""
    return int(index.hnsw.efSearch) if hasattr(index, "hnsw") else int(index.nprobe)


def set_breadth(index, value: int) -> int:
    """Set the search breadth, capped (efSearch at :data:`MAX_BREADTH`, nprobe at the number of lists)."""
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = value = min(value, MAX_BREADTH)
    else:
        index.nprobe = value = min(value, index.nlist)
    return value


def index_topk(index, queries: torch.Tensor, k: int, progress: bool = False, desc: str = "search",
               block: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, indices)`` of the ``k`` best keys per query from a faiss ``index``, in blocks (a progress bar)."""
    k = min(k, index.ntotal)
    scores = torch.empty(len(queries), k, dtype=torch.float32)
    indices = torch.empty(len(queries), k, dtype=torch.long)
    for lo in tqdm(range(0, len(queries), block), desc=desc, unit="block", disable=not progress, leave=False,
                   mininterval=1.0):
        s, i = index.search(np.ascontiguousarray(queries[lo:lo + block].float().numpy()), k)
        scores[lo:lo + len(s)], indices[lo:lo + len(s)] = torch.from_numpy(s), torch.from_numpy(i).long()
    return scores, indices


def recall(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of the exact top-k indices that the approximate top-k also found (mean over queries)."""
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(sum(hits) / max(1, exact.numel()))


def recall_at(index, sample: torch.Tensor, truth: torch.Tensor, width: int) -> dict:
    """Search ``sample`` at breadth ``width`` (capped) and score it against ``truth``, its exact top-k:
    ``{breadth, recall, ms_per_query}``; the index keeps that breadth."""
    width = set_breadth(index, width)
    start = time.perf_counter()
    _, found = index_topk(index, sample, truth.shape[1])
    return {"breadth": width, "recall": round(recall(found, truth), 4),
            "ms_per_query": round(1000 * (time.perf_counter() - start) / max(1, len(sample)), 4)}


def tune_recall(index, sample: torch.Tensor, truth: torch.Tensor, target: float) -> tuple[float, list[dict]]:
    """Double the search breadth until ``sample``'s recall reaches ``target`` or the breadth is at its cap;
    returns the last recall and every :func:`recall_at` tried."""
    tried = [recall_at(index, sample, truth, breadth(index))]
    while tried[-1]["recall"] < target and set_breadth(index, 2 * tried[-1]["breadth"]) > tried[-1]["breadth"]:
        tried.append(recall_at(index, sample, truth, breadth(index)))
    return tried[-1]["recall"], tried


def search(queries: torch.Tensor, keys: torch.Tensor, k: int, cfg: MineConfig,
           desc: str = "search") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Top-k keys per query by ``mine.index`` ("exact", "hnsw", "ivf", or "auto": exact up to ``exact_limit``
    keys, HNSW beyond when faiss is installed); returns the scores, the indices and what was used:
    ``{"index", "recall", ...}``, recall measured against exact search on ``mine.recall_sample`` queries
    (1.0 for exact), with the breadth that reached it and whether it met ``mine.recall_target``."""
    method = cfg.index
    if method == "auto":
        method = "exact" if len(keys) <= cfg.exact_limit or not faiss_available() else "hnsw"
    if method == "exact":
        scores, indices = exact_topk(queries, keys, k, cfg.chunk, cfg.progress, desc)
        return scores, indices, {"index": "exact", "recall": 1.0}
    start = time.perf_counter()
    index = build_index(keys, method, cfg)
    built = time.perf_counter() - start
    pick = torch.from_numpy(np.random.default_rng(cfg.seed).choice(
        len(queries), min(cfg.recall_sample, len(queries)), replace=False))
    _, truth = exact_topk(queries[pick], keys, k, cfg.chunk)
    measured, tried = tune_recall(index, queries[pick], truth, cfg.recall_target)
    if measured < cfg.recall_target:
        log.warning("%s: %s recall %.3f at the widest search (%d) is below mine.recall_target %.2f; raise "
                    "mine.hnsw_m / mine.nlist or use mine.index: exact", desc, method, measured, breadth(index),
                    cfg.recall_target)
    tuned = time.perf_counter() - start - built
    scores, indices = index_topk(index, queries, k, cfg.progress, desc)
    return scores, indices, {"index": method, "recall": measured, "recall_queries": len(pick),
                             "recall_target": cfg.recall_target, "target_met": measured >= cfg.recall_target,
                             "breadth": breadth(index), "tried": tried, "build_s": round(built, 3),
                             "tune_s": round(tuned, 3)}
