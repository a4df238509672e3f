"""MMStar-format multiple choice (Chen et al., 2024): general understanding, so that a model that forgets
how to answer questions fails the gate.

A file of JSON lines, one question each: ``{"index", "question", "answer", "category", "l2_category",
"image"}``. The question ends with its options as MMStar writes them
(``"...?\\nOptions: A: one, B: two, C: three, D: four"``), the answer is a letter, and ``image`` is a file
name under the image folder (or, as in MMStar's TSV, a base64-encoded image). Answers are matched the way
VLMEvalKit matches them without a judge model (:func:`parse_choice`); a reply that names no option is
wrong and counts towards ``mmstar_invalid_rate``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

_OPTIONS = re.compile(r"Options:\s*(.*)$", re.DOTALL)
_OPTION = re.compile(r"(?:^|,\s*)([A-Z]):\s*(.*?)(?=,\s*[A-Z]:\s|$)", re.DOTALL)


@dataclass(frozen=True)
class ChoiceQuestion:
    index: int | str
    question: str
    answer: str
    category: str
    image: str


def options(question: str) -> dict[str, str]:
    """``{"A": "one", ...}`` from the question's ``Options:`` line."""
    m = _OPTIONS.search(question)
    if not m:
        return {}
    return {letter: text.strip() for letter, text in _OPTION.findall(m.group(1).strip())}


# VLMEvalKit's rule-based matching (vlmeval/utils/matching_util.py, `can_infer`, as of commit e8e78f05,
# 2026-08): its `exact_matching` policy, i.e. no judge model
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_PUNCTUATION = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def option_letter(reply: str, opts: dict[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer_option``: the letter when exactly one option letter is a token of the reply
    (tokens split on whitespace after ``.()[],:;!*#{}`` become spaces; case-sensitive) and it is among the
    last four tokens, else a letter after "answer is"; "Z" for a refusal or a lone "Z"; None otherwise."""
    if any(refusal in reply for refusal in _REFUSALS):
        return "Z"
    tokens = reply.translate(_PUNCTUATION).split()
    named = [letter for letter in opts if letter in tokens]
    if len(named) == 1:
        if tokens.index(named[0]) > len(tokens) - 5:
            return named[0]
    elif not named and "Z" in tokens:
        return "Z"
    m = _ANSWER_IS.search(reply)
    return m.group(1).upper() if m and m.group(1).upper() in opts else None


def option_text(reply: str, opts: dict[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer_text``: the letter of the one option whose text occurs in the lower-cased
    reply (as a substring), unless the reply is longer than twice the options' texts together."""
    low = reply.lower()
    if len(low) > 2 * sum(len(text) for text in opts.values()):
        return None
    named = [letter for letter, text in opts.items() if text.lower() in low]
    return named[0] if len(named) == 1 else None


def parse_choice(reply: str, opts: dict[str, str]) -> str | None:
    """The option letter a reply chooses, as VLMEvalKit's ``can_infer`` decides (the letter, else the
    option's text); None when it chooses none (VLMEvalKit's "Z": wrong, and counted as invalid)."""
    letter = option_letter(reply, opts) or option_text(reply, opts)
    return letter if letter in opts else None


def load_mmstar(path: str | Path) -> list[ChoiceQuestion]:
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            q = ChoiceQuestion(rec["index"], rec["question"], str(rec["answer"]).strip().upper(),
                               rec.get("category", "all"), rec["image"])
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{path}:{n}: not an MMStar question ({err}); expected index, question, answer, image") from None
        if q.answer not in options(q.question):
            raise ValueError(f"{path}:{n}: answer {q.answer!r} is not one of the question's options")
        out.append(q)
    return out


def load_image(ref: str, image_root: str | Path) -> Image.Image:
    """A file under the image root, or a base64-encoded image (MMStar's TSV)."""
    path = Path(image_root) / ref
    if len(ref) < 512 and path.is_file():
        with Image.open(path) as img:
            return img.convert("RGB")
    try:
        return Image.open(io.BytesIO(base64.b64decode(ref, validate=True))).convert("RGB")
    except (binascii.Error, OSError):
        raise FileNotFoundError(f"MMStar image {ref[:60]!r} is neither a file under {image_root} nor base64") from None


def mmstar_arrays(questions: list[ChoiceQuestion], replies: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    """Per-item arrays for the ``mmstar`` group: correct, category index, and whether the reply chose an
    option at all (``valid``)."""
    categories = sorted({q.category for q in questions})
    chosen = [parse_choice(r, options(q.question)) for q, r in zip(questions, replies)]
    return ({"correct": np.array([c == q.answer for c, q in zip(chosen, questions)], dtype=np.int8),
             "category": np.array([categories.index(q.category) for q in questions], dtype=np.int16),
             "valid": np.array([c is not None for c in chosen], dtype=np.int8)},
            {"categories": categories})
