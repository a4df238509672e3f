"""Stage bookkeeping shared by the CLI: a stage's output directory records the digest of the config
that produced it, so a re-run with the same config is skipped and a changed config re-runs it."""

from __future__ import annotations

import json
from pathlib import Path

MARKER = "cafe_stage.json"


def is_current(out: str | Path, stage: str, digest: str) -> bool:
    marker = Path(out) / MARKER
    if not marker.is_file():
        return False
    data = json.loads(marker.read_text())
    return data.get("stage") == stage and data.get("digest") == digest


def mark(out: str | Path, stage: str, digest: str, **extra) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"stage": stage, "digest": digest, **extra}, indent=1))
