"""Generation checks: objects named in captions against the objects present, and yes/no answers.

Object matching uses a vocabulary of attribute words and object words (the shapes world's colours and
shapes by default): an object is a (colour, shape) pair named in the text. Yes/no answers are parsed the
way POPE's evaluate.py does (:func:`cafe.evaluation.pope.parse_answer`: first sentence, commas removed, split
on spaces, case-sensitive "No"/"not"/"no" means no, otherwise yes).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

from cafe.evaluation.per_item import yes_no_metrics
from cafe.evaluation.pope import parse_answer as parse_yes_no  # noqa: F401  (POPE's rule, re-exported)

_WORD = re.compile(r"[a-z]+")


def parse_objects(text: str, colours: Iterable[str], shapes: Iterable[str]) -> set[tuple[str, str]]:
    """(colour, shape) pairs named in the text: a shape word with the nearest colour word before it
    (size words may stand between)."""
    colours, shapes = set(colours), set(shapes)
    found: set[tuple[str, str]] = set()
    colour = None
    for word in _WORD.findall(text.lower()):
        if word in colours:
            colour = word
        elif word in shapes:
            if colour is not None:
                found.add((colour, word))
            colour = None
    return found


def object_prf(predicted: Sequence[set], truth: Sequence[set]) -> dict[str, float]:
    """Micro precision, recall and F1 of predicted object sets against the true ones."""
    tp = sum(len(p & t) for p, t in zip(predicted, truth))
    n_pred = sum(len(p) for p in predicted)
    n_true = sum(len(t) for t in truth)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def yes_no_scores(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive = "yes") and the share of "yes" answers, POPE's way."""
    pred = np.array([parse_yes_no(a) == "yes" for a in answers], dtype=np.int8)
    return yes_no_metrics(pred, np.array([label == "yes" for label in labels], dtype=np.int8))
