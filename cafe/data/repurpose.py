"""Instruction data -> (image, caption) pairs (paper section 4.1): the instruction is dropped and the
answer becomes the caption. Records without a usable answer are counted and skipped, never guessed at."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from cafe.config import RepurposeConfig
from cafe.data.samples import IMAGE_PLACEHOLDER

_DEBRIS = re.compile(r"<image>|<\|im_(start|end)\|>|^\s*(assistant|gpt)\s*:\s*", re.IGNORECASE)


def clean_answer(text: str) -> str:
    return " ".join(_DEBRIS.sub(" ", text).split())


def repurpose(cfg: RepurposeConfig) -> dict[str, int]:
    """Write pairs JSON lines (``id``, ``image`` as an absolute path, ``caption``); returns counts."""
    records = json.loads(Path(cfg.input).read_text())
    root = Path(cfg.image_root).resolve()
    counts: Counter[str] = Counter(input=len(records))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w") as fh:
        for rec in records:
            kind = rec.get("kind")
            if cfg.keep_kinds and kind is not None and kind not in cfg.keep_kinds:
                counts["skipped_kind"] += 1
                continue
            answers = [t["value"] for t in rec.get("conversations", []) if t.get("from") == "gpt"]
            caption = clean_answer(answers[0]) if answers else ""
            if not caption or IMAGE_PLACEHOLDER in caption:
                counts["no_answer"] += 1
                continue
            fh.write(json.dumps({"id": rec["id"], "image": str(root / rec["image"]), "caption": caption}) + "\n")
            counts["kept"] += 1
    tmp.replace(out)
    return dict(counts)
