"""POPE (Li et al., 2023): yes/no object probes in POPE's own files and with POPE's own answer parsing
(``evaluate.py`` of github.com/RUCAIBox/POPE: first sentence, commas removed, split on spaces,
case-sensitive "No"/"not"/"no" means no, anything else yes), plus the share of replies that say neither.

A POPE file is JSON lines, one question per line: ``{"question_id", "image", "text", "label"}`` with label
"yes" or "no"; one file per split (random, popular, adversarial), e.g. ``coco_pope_random.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class PopeQuestion:
    question_id: int | str
    image: str
    text: str
    label: str  # "yes" | "no"
    split: str


# POPE's evaluate.py (github.com/RUCAIBox/POPE): the words that decide, matched case-sensitively
NO_WORDS = frozenset({"No", "not", "no"})
YES_WORDS = frozenset({"Yes", "yes"})


def answer_words(answer: str) -> set[str]:
    """POPE's words of a reply: the text before the first ".", commas removed (not replaced), split on
    single spaces. Case is kept and other whitespace does not split: "NO" or "no\nthere" is no "no"."""
    return set(answer.split(".")[0].replace(",", "").split(" "))


def answer_kind(answer: str) -> str:
    """"no" when POPE's words hold No/not/no, else "yes" when they hold Yes/yes, else "other": a reply that
    is no answer (POPE itself counts it as "yes"; ``pope_invalid_rate`` counts it as invalid)."""
    words = answer_words(answer)
    if words & NO_WORDS:
        return "no"
    return "yes" if words & YES_WORDS else "other"


def parse_answer(answer: str) -> str:
    """POPE's own decision: "no" when No/not/no is among :func:`answer_words`, anything else "yes"."""
    return "no" if answer_kind(answer) == "no" else "yes"


def read_pope_file(path: str | Path, split: str) -> list[PopeQuestion]:
    """One POPE split; a malformed line fails with its file and line number."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            label = str(rec["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"label must be 'yes' or 'no', got {rec['label']!r}")
            out.append(PopeQuestion(rec["question_id"], rec["image"], rec["text"], label, rec.get("split", split)))
        except (json.JSONDecodeError, KeyError, ValueError) as err:
            raise ValueError(f"{path}:{n}: not a POPE question ({err}); expected question_id, image, text, label") from None
    return out


def find_pope_files(root: str | Path) -> dict[str, Path]:
    """``<root>/pope/*_pope_<split>.json`` for each split that exists."""
    folder = Path(root) / "pope"
    found = {}
    for split in SPLITS:
        matches = sorted(folder.glob(f"*_pope_{split}.json")) if folder.is_dir() else []
        if matches:
            found[split] = matches[0]
    return found


def load_pope(root: str | Path) -> list[PopeQuestion]:
    """All splits under ``root``; falls back to one ``pope.jsonl`` whose lines carry a ``split`` field."""
    files = find_pope_files(root)
    if files:
        return [q for split, path in files.items() for q in read_pope_file(path, split)]
    legacy = Path(root) / "pope.jsonl"
    if legacy.is_file():
        return read_pope_file(legacy, "random")
    raise FileNotFoundError(f"{root}: no POPE files (pope/*_pope_<split>.json or pope.jsonl); run `cafe synth`")


def pope_arrays(questions: list[PopeQuestion], answers: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    """Per-item arrays for the ``pope`` group: POPE's prediction (1 = yes), label, split index and whether
    the reply said yes or no at all (``valid``)."""
    splits = [s for s in SPLITS if any(q.split == s for q in questions)]
    splits += sorted({q.split for q in questions} - set(splits))
    arrays = {
        "pred": np.array([parse_answer(a) == "yes" for a in answers], dtype=np.int8),
        "label": np.array([q.label == "yes" for q in questions], dtype=np.int8),
        "split": np.array([splits.index(q.split) for q in questions], dtype=np.int16),
        "valid": np.array([answer_kind(a) != "other" for a in answers], dtype=np.int8),
    }
    return arrays, {"splits": splits}
