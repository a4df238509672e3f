"""Mining one split of pairs with one model: embed, search both directions, apply the false-negative rules,
write the versioned shards, summarise what each rule dropped."""

from __future__ import annotations

import resource
import time

import torch

from cafe.config import MineConfig
from cafe.mining.embed import Pairs, embed_pairs, embedding_cache, read_pairs
from cafe.mining.rules import ORDER, PairKeys, mine_direction
from cafe.mining.search import search
from cafe.mining.shards import write_negatives
from cafe.models.adapter import VLMAdapter

DIRECTIONS = {"i2t": "text", "t2i": "image"}  # direction -> the kind of negative it mines


def mine_embeddings(image: torch.Tensor, text: torch.Tensor, keys: PairKeys, cfg: MineConfig) -> dict:
    """Negatives of both directions from row-aligned embeddings: ``{"i2t": (idx, scores, counts), "t2i": ...,
    "search": {...}}`` (indices into the pairs, -1 padded)."""
    positive = (image * text).sum(dim=1)
    result, searched = {}, {}
    for direction, (queries, keys_emb) in (("i2t", (image, text)), ("t2i", (text, image))):
        start = time.perf_counter()
        scores, indices, info = search(queries, keys_emb, cfg.candidates, cfg.index, cfg.exact_limit, cfg.chunk,
                                       cfg.nlist, cfg.nprobe, cfg.seed, cfg.progress, f"mine: search {direction}")
        searched[direction] = {**info, "seconds": round(time.perf_counter() - start, 3)}
        result[direction] = mine_direction((scores, indices), positive, keys, cfg.k, list(cfg.rules), cfg.margin,
                                           cfg.near_duplicate_distance, cfg.rank_range, cfg.seed)
    result["search"] = searched
    return result


def mine(adapter: VLMAdapter, cfg: MineConfig, captions: str, pairs_version: str, model: dict,
         model_path: str | None = None) -> dict:
    """Mine ``cfg.data``'s ``cfg.split`` with ``adapter`` into ``cfg.out``; returns the summary (also
    ``summary.json``). ``model``: the mining model's identity recorded in the version (path, version, digest)."""
    start = time.perf_counter()
    pairs: Pairs = read_pairs(cfg.data, cfg.split, captions, phash="near_duplicate" in cfg.rules,
                              progress=cfg.progress)
    if len(pairs) < 2:
        raise ValueError(f"{cfg.data}/{cfg.split}: {len(pairs)} pairs; mining needs at least 2")
    read_s = time.perf_counter() - start
    cache = embedding_cache(adapter, cfg.cache_dir, model_path)
    adapter.model.eval()
    image, text = embed_pairs(adapter, pairs, cache, cfg.batch_size, cfg.progress)
    embed_s = time.perf_counter() - start - read_s
    mined = mine_embeddings(image, text, PairKeys.build(pairs.captions, pairs.image_sha256, pairs.phash), cfg)
    summary = {
        "pairs": len(pairs), "k": cfg.k, "candidates": cfg.candidates, "rules": list(cfg.rules),
        "margin": cfg.margin, "rank_range": cfg.rank_range,
        "directions": {d: {"negative": DIRECTIONS[d], **mined[d][2],
                           "pairs_short": int((mined[d][0] < 0).any(axis=1).sum())} for d in DIRECTIONS},
        "search": mined["search"], "embedding_cache": {"hits": cache.hits, "misses": cache.misses},
        "seconds": {"read": round(read_s, 3), "embed": round(embed_s, 3),
                    "total": round(time.perf_counter() - start, 3)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    version = write_negatives(cfg.out, cfg.split, pairs.ids, mined["i2t"][:2], mined["t2i"][:2], pairs_version,
                              model, summary, cfg.model_dump(mode="json"))
    return {**summary, "data_version": version["sha256"]}


def print_summary(summary: dict, out: str, console) -> None:
    """One row per outcome (each rule, kept, unused), one column per direction."""
    from rich.table import Table

    table = Table(title=f"mine -> {out}  ({summary['pairs']} pairs, k={summary['k']} of {summary['candidates']} "
                        f"neighbours, {summary['seconds']['total']:.1f}s)")
    table.add_column("candidates")
    for direction, info in summary["directions"].items():
        table.add_column(f"{direction} ({info['negative']} negatives)", justify="right")
    for name in (*ORDER, "kept", "unused", "pairs_short"):
        label = {"kept": "kept", "unused": "survived, not needed", "pairs_short": "pairs with < k negatives"}.get(
            name, f"dropped: {name}")
        table.add_row(label, *(str(info[name]) for info in summary["directions"].values()))
    console.print(table)
    for direction, info in summary["search"].items():
        console.print(f"{direction}: {info['index']} search, recall {info['recall']:.3f}, {info['seconds']:.2f}s")
