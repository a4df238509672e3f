"""Evaluation folders for the report tests, written as `cafe evaluate` writes them: MMStar-format per-item
results (``per_item.npz``), the metrics computed from them, and replies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cafe.evaluation.per_item import PerItem

PROMPT = "Q?\nOptions: A: x, B: y"


def mmstar_replies(letters: str, image: str = "x.png") -> list[dict]:
    """One MMStar reply per letter (A is the right option) about ``image``, as lines of replies.jsonl."""
    return [{"id": i, "part": "mmstar", "image": image, "prompt": PROMPT, "reply": r, "parsed": r, "correct": r == "A"}
            for i, r in enumerate(letters)]


def evaluation_folder(folder: Path, correct: list[int], metrics: dict | None = None, replies: list[dict] | None = None,
                      details: dict | None = None) -> Path:
    """``folder`` with MMStar results ``correct`` (1 right, 0 wrong, one category), metrics.json (``metrics``
    plus the MMStar metrics of those results), replies.jsonl and, when given, details.json."""
    folder.mkdir(parents=True, exist_ok=True)
    items = PerItem()
    n = len(correct)
    items.add("mmstar", {"categories": ["all"]}, correct=np.array(correct, dtype=np.int8),
              category=np.zeros(n, dtype=np.int16), valid=np.ones(n, dtype=np.int8))
    items.save(folder / "per_item.npz")
    (folder / "metrics.json").write_text(json.dumps({**(metrics or {}), **items.metrics()}))
    (folder / "replies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in replies or []))
    if details is not None:
        (folder / "details.json").write_text(json.dumps(details))
    return folder
