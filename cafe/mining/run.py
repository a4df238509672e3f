"""Mining one split of pairs with one model: embed, search both directions, apply the false-negative rules,
write the versioned shards, summarise what each rule dropped."""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from cafe.config import MineConfig
from cafe.mining.embed import Pairs, embed_pairs, embedding_cache, read_pairs
from cafe.mining.rules import ORDER, PairKeys, mine_direction
from cafe.mining.search import search
from cafe.mining.shards import write_negatives
from cafe.mining.swaps import DROPS, KINDS, swap_negatives
from cafe.models.adapter import VLMAdapter

DIRECTIONS = {"i2t": "text", "t2i": "image"}  # direction -> the kind of negative it mines


def mine_embeddings(image: torch.Tensor, text: torch.Tensor, keys: PairKeys, cfg: MineConfig) -> dict:
    """Negatives of both directions from row-aligned embeddings: ``{"i2t": (idx, scores, counts), "t2i": ...,
    "search": {...}}`` (indices into the pairs, -1 padded)."""
    positive = (image * text).sum(dim=1)
    result, searched = {}, {}
    for direction, (queries, keys_emb) in (("i2t", (image, text)), ("t2i", (text, image))):
        start = time.perf_counter()
        scores, indices, info = search(queries, keys_emb, cfg.candidates, cfg, f"mine: search {direction}")
        searched[direction] = {**info, "seconds": round(time.perf_counter() - start, 3)}
        result[direction] = mine_direction((scores, indices), positive, keys, cfg.k, list(cfg.rules), cfg.margin,
                                           cfg.near_duplicate_distance, cfg.rank_range, cfg.seed)
    result["search"] = searched
    return result


def merge(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
          k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``first``'s negatives then ``second``'s not already in, ``k`` at most (-1 / NaN padded)."""
    idx, scores = np.full((len(first[0]), k), -1, dtype=np.int64), np.full((len(first[0]), k), np.nan, np.float32)
    for row in range(len(idx)):
        seen: dict[int, float] = {}
        for ids, sc in (first, second):
            for j, s in zip(ids[row], sc[row]):
                if j >= 0 and j not in seen and len(seen) < k:
                    seen[int(j)] = s
        idx[row, :len(seen)], scores[row, :len(seen)] = list(seen), list(seen.values())
    return idx, scores


def mine(adapter: VLMAdapter | None, cfg: MineConfig, captions: str, pairs_version: str, model: dict | None,
         model_path: str | None = None) -> dict:
    """Mine ``cfg.data``'s ``cfg.split`` into ``cfg.out`` by ``cfg.source``: with ``adapter`` (the model's
    neighbours), by attribute swaps (:mod:`cafe.mining.swaps`, no adapter) or both; returns the summary (also
    ``summary.json``). ``model``: the mining model's identity recorded in the version (path, version, digest)."""
    start = time.perf_counter()
    by_model = cfg.source != "attribute_swaps"
    pairs: Pairs = read_pairs(cfg.data, cfg.split, captions, phash=by_model and "near_duplicate" in cfg.rules,
                              progress=cfg.progress)
    if len(pairs) < 2:
        raise ValueError(f"{cfg.data}/{cfg.split}: {len(pairs)} pairs; mining needs at least 2")
    seconds = {"read": round(time.perf_counter() - start, 3)}
    summary: dict = {"source": cfg.source, "pairs": len(pairs), "k": cfg.k}
    text = image = swapped = None
    if by_model:
        if adapter is None:
            raise ValueError(f"mine.source {cfg.source} needs a mining model")
        cache = embedding_cache(adapter, cfg.cache_dir, model_path)
        adapter.model.eval()
        image_emb, text_emb = embed_pairs(adapter, pairs, cache, cfg.batch_size, cfg.progress)
        seconds["embed"] = round(time.perf_counter() - start - seconds["read"], 3)
        mined = mine_embeddings(image_emb, text_emb, PairKeys.build(pairs.captions, pairs.image_sha256, pairs.phash),
                                cfg)
        text, image = mined["i2t"][:2], mined["t2i"][:2]
        summary.update({
            "candidates": cfg.candidates, "rules": list(cfg.rules), "margin": cfg.margin,
            "rank_range": cfg.rank_range,
            "directions": {d: {"negative": DIRECTIONS[d], **mined[d][2],
                               "pairs_short": int((mined[d][0] < 0).any(axis=1).sum())} for d in DIRECTIONS},
            "search": mined["search"], "embedding_cache": {"hits": cache.hits, "misses": cache.misses}})
    if cfg.source != "model":
        lap = time.perf_counter()
        swaps = swap_negatives(pairs.captions, pairs.image_sha256, cfg.k, cfg.seed)
        seconds["swaps"] = round(time.perf_counter() - lap, 3)
        found = (swaps["pairs"], np.full(swaps["pairs"].shape, np.nan, dtype=np.float32))  # no model score
        text, image = (found, found) if text is None else (merge(found, text, cfg.k), merge(found, image, cfg.k))
        swapped, summary["swaps"] = swaps["captions"], swaps["summary"]
        written = {d: {"negative": DIRECTIONS[d], "kept": int((idx >= 0).sum()),
                       "pairs_short": int((idx < 0).any(axis=1).sum())} for d, (idx, _) in (("i2t", text),
                                                                                          ("t2i", image))}
        # both: the model's table stays as mined; what was written (swaps first) is the swaps' "written"
        summary["swaps"]["written"] = written
        summary.setdefault("directions", written)
    seconds["total"] = round(time.perf_counter() - start, 3)
    summary.update({"seconds": seconds,
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    version = write_negatives(cfg.out, cfg.split, pairs.ids, text, image, pairs_version, model, summary,
                              cfg.model_dump(mode="json"), swaps=swapped)
    return {**summary, "data_version": version["sha256"]}


def print_summary(summary: dict, out: str, console) -> None:
    """The model's table (one row per outcome: each rule, kept, unused; one column per direction) and the
    attribute swaps' (variants made and kept per kind, dropped per rule, the rule's false-negative rate)."""
    from rich.table import Table

    if "swaps" in summary:
        swaps = summary["swaps"]
        table = Table(title=f"mine (attribute swaps) -> {out}  ({summary['pairs']} pairs, k={summary['k']}, "
                            f"{summary['seconds']['swaps']:.1f}s)")
        table.add_column("variants")
        table.add_column("count", justify="right")
        for kind in KINDS:
            table.add_row(f"made: {kind}", f"{swaps['made'][kind]} ({swaps['text_negatives'][kind]} written)")
        for rule in DROPS:
            table.add_row(f"dropped: {rule}", str(swaps["dropped"][rule]))
        table.add_row("kept", str(swaps["kept"]))
        for d, info in swaps["written"].items():
            table.add_row(f"{d} pair negatives written", f"{info['kept']} ({info['pairs_short']} pairs < k)")
        console.print(table)
        rate = swaps["false_negative_rate"]
        console.print(f"swap rule false negatives (ground truth, {swaps['pairs_with_ground_truth']} pairs): "
                      f"{rate['false_negatives']} of {rate['kept']} kept by the normalised-caption rule alone "
                      f"(rate {rate['rate']}); dropped here as fits_image")
        if "search" not in summary:
            return
    table = Table(title=f"mine -> {out}  ({summary['pairs']} pairs, k={summary['k']} of {summary['candidates']} "
                        f"neighbours, {summary['seconds']['total']:.1f}s)")
    table.add_column("candidates")
    for direction, info in summary["directions"].items():
        table.add_column(f"{direction} ({info['negative']} negatives)", justify="right")
    for name in (*ORDER, "not_found", "kept", "unused", "pairs_short"):
        label = {"kept": "kept", "unused": "survived, not needed", "pairs_short": "pairs with < k negatives",
                 "not_found": "not found by the index"}.get(name, f"dropped: {name}")
        table.add_row(label, *(str(info[name]) for info in summary["directions"].values()))
    console.print(table)
    for direction, info in summary["search"].items():
        wide = f" (breadth {info['breadth']}, target {info['recall_target']})" if "breadth" in info else ""
        console.print(f"{direction}: {info['index']} search, recall {info['recall']:.3f}{wide}, "
                      f"{info['seconds']:.2f}s")
