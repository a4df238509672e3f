"""SugarCrepe (Hsieh et al., 2023) compositionality: does the image score its true caption above a hard
negative? One JSON file per subset (``replace_att.json``, ``swap_obj.json``, ``add_obj.json``, ...), each a
mapping ``id -> {"filename", "caption", "negative_caption"}``; the category is the subset name's prefix
(replace, swap, add)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SUBSETS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")


@dataclass(frozen=True)
class SugarCrepeItem:
    subset: str
    filename: str
    caption: str
    negative: str


def load_sugarcrepe(folder: str | Path) -> list[SugarCrepeItem]:
    folder = Path(folder)
    items = []
    for subset in SUBSETS:
        path = folder / f"{subset}.json"
        if not path.is_file():
            continue
        for key, rec in json.loads(path.read_text()).items():
            missing = {"filename", "caption", "negative_caption"} - set(rec)
            if missing:
                raise ValueError(f"{path}: item {key!r} lacks {sorted(missing)}")
            items.append(SugarCrepeItem(subset, rec["filename"], rec["caption"], rec["negative_caption"]))
    if not items:
        raise FileNotFoundError(f"{folder}: no SugarCrepe subset files ({', '.join(s + '.json' for s in SUBSETS)})")
    return items


def sugarcrepe_arrays(items: list[SugarCrepeItem], image_emb: torch.Tensor, pos_emb: torch.Tensor,
                      neg_emb: torch.Tensor) -> tuple[dict[str, np.ndarray], dict]:
    """Correct when the positive caption scores strictly higher than the negative (a tie is wrong)."""
    pos = (image_emb * pos_emb).sum(-1)
    neg = (image_emb * neg_emb).sum(-1)
    subsets = [s for s in SUBSETS if any(i.subset == s for i in items)]
    return ({"correct": (pos > neg).numpy().astype(np.int8),
             "subset": np.array([subsets.index(i.subset) for i in items], dtype=np.int16)},
            {"subsets": subsets})
