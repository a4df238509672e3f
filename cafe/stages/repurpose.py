"""Stage `repurpose`: instruction data -> Parquet shards of (image, short caption, long caption) pairs with
stats.json, quarantine.jsonl and data_version.json (the shards' content hash)."""

from __future__ import annotations

import json
from pathlib import Path

from cafe.config import RepurposeConfig
from cafe.data.repurpose import repurpose as run
from cafe.storage import localize


def repurpose(cfg: RepurposeConfig, source: str | None = None, out: str | Path | None = None,
              console=None) -> dict:
    """Repurpose ``cfg``'s sources into shards at ``out`` (default ``cfg.out``). ``source`` replaces them with one
    instruction folder (``instructions.json`` + images; a local path or an ``s3://`` URI, downloaded beside
    ``out``). Also writes ``metrics.json``, the stats' numbers only. Returns the stats (``data_version`` among
    them); raises RepurposeError."""
    update: dict = {"out": str(out)} if out is not None else {}
    if source:
        folder = localize(source, Path(out or cfg.out).parent / "source")
        update |= {"mixture": "", "input": str(folder / "instructions.json"), "image_root": str(folder)}
    cfg = cfg.model_copy(update=update)
    stats = run(cfg, console)
    numbers = _numbers(stats)
    (Path(cfg.out) / METRICS).write_text(json.dumps(numbers, indent=1))
    return stats


METRICS = "metrics.json"  # stats.json's numbers only: what `dvc metrics show` lists


def _numbers(value):
    """The numeric leaves of a JSON value (nested dicts kept; texts, hashes and lists dropped)."""
    if isinstance(value, dict):
        found = {k: _numbers(v) for k, v in value.items()}
        return {k: v for k, v in found.items() if v is not None and v != {}}
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, (int, float)) else None
