"""MMStar-format multiple choice (Chen et al., 2024): general understanding, so that a model that forgets
how to answer questions fails the gate.

A file of JSON lines, one question each: ``{"index", "question", "answer", "category", "l2_category",
"image"}``. The question ends with its options as MMStar writes them
(``"...?\\nOptions: A: one, B: two, C: three, D: four"``), the answer is a letter, and ``image`` is a file
name under the image folder (or, as in MMStar's TSV, a base64-encoded image). Answers are matched the way
VLMEvalKit matches them: exactly one option letter in the reply, or else exactly one option's text.
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


def parse_choice(reply: str, opts: dict[str, str]) -> str | None:
    """The option letter a reply chooses, or None when it names none or several."""
    tokens = re.sub(r"[^\w\s]", " ", reply).split()
    letters = {t for t in tokens if t in opts}
    if len(letters) == 1:
        return letters.pop()
    text = " " + " ".join(re.sub(r"[^\w\s]", " ", reply.lower()).split()) + " "
    named = [k for k, v in opts.items() if f" {v.lower()} " in text]
    return named[0] if len(named) == 1 else None


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
    categories = sorted({q.category for q in questions})
    correct = [parse_choice(r, options(q.question)) == q.answer for q, r in zip(questions, replies)]
    return ({"correct": np.array(correct, dtype=np.int8),
             "category": np.array([categories.index(q.category) for q in questions], dtype=np.int16)},
            {"categories": categories})
