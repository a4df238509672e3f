"""THRONE-style free-form hallucination (Kaul et al., 2024): which object classes a model names in its
own detailed descriptions, against the classes present.

A class is named when one of its synonyms (a word or a phrase, matched as whole words) occurs in the text.
The vocabulary (class -> synonyms) is configurable; the shapes world writes its own
(``throne/vocabulary.json``: every colour x shape, with synonyms for the shape words).
Annotations: ``throne/annotations.json``, a list of ``{"image", "objects": [class, ...]}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Vocabulary:
    """Class names with their synonyms; finds the classes a text names."""

    def __init__(self, synonyms: dict[str, list[str]]):
        if not synonyms:
            raise ValueError("THRONE vocabulary is empty: give at least one class with its synonyms")
        self.classes = list(synonyms)
        self._phrases: list[tuple[tuple[str, ...], int]] = []
        for c, name in enumerate(self.classes):
            for phrase in {name, *synonyms[name]}:
                words = tuple(_words(phrase))
                if words:
                    self._phrases.append((words, c))
        self._phrases.sort(key=lambda item: -len(item[0]))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"{path}: a THRONE vocabulary is a mapping class -> list of synonyms")
        return cls(data)

    def find(self, text: str) -> set[int]:
        """Indices of the classes named in the text (whole-word phrase match)."""
        words = _words(text)
        found = set()
        for phrase, c in self._phrases:
            n = len(phrase)
            if any(tuple(words[i:i + n]) == phrase for i in range(len(words) - n + 1)):
                found.add(c)
        return found

    def index(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise ValueError(f"object {name!r} is not a class of the THRONE vocabulary") from None


def load_annotations(path: str | Path) -> list[dict]:
    data = json.loads(Path(path).read_text())
    for n, rec in enumerate(data):
        if "image" not in rec or not isinstance(rec.get("objects"), list):
            raise ValueError(f"{path}: record {n} needs 'image' and an 'objects' list")
    return data


def throne_arrays(texts: list[str], objects: list[list[str]], vocab: Vocabulary) -> tuple[dict[str, np.ndarray], dict]:
    """Per image and class: true positives, false positives (hallucinated), false negatives (missed)."""
    n, k = len(texts), len(vocab.classes)
    named = np.zeros((n, k), dtype=bool)
    present = np.zeros((n, k), dtype=bool)
    for i, (text, objs) in enumerate(zip(texts, objects)):
        named[i, list(vocab.find(text))] = True
        present[i, [vocab.index(o) for o in objs]] = True
    arrays = {"tp": (named & present).astype(np.int8), "fp": (named & ~present).astype(np.int8),
              "fn": (~named & present).astype(np.int8)}
    return arrays, {"classes": vocab.classes}
