"""Stage `repurpose`: instruction data -> Parquet shards of (image, short caption, long caption) pairs with
stats.json, quarantine.jsonl and data_version.json (the shards' content hash)."""

from __future__ import annotations

from pathlib import Path

from cafe.config import RepurposeConfig
from cafe.data.repurpose import repurpose as run
from cafe.storage import localize


def repurpose(cfg: RepurposeConfig, source: str | None = None, out: str | Path | None = None,
              console=None) -> dict:
    """Repurpose ``cfg``'s sources into shards at ``out`` (default ``cfg.out``). ``source`` replaces them with one
    instruction folder (``instructions.json`` + images; a local path or an ``s3://`` URI, downloaded beside
    ``out``). Returns the stats (``data_version`` among them); raises RepurposeError."""
    update: dict = {"out": str(out)} if out is not None else {}
    if source:
        folder = localize(source, Path(out or cfg.out).parent / "source")
        update |= {"mixture": "", "input": str(folder / "instructions.json"), "image_root": str(folder)}
    return run(cfg.model_copy(update=update), console)
