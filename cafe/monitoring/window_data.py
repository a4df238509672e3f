"""The traffic window as training data: every feedback-labelled search becomes an (image, caption) pair, the
chosen gallery image with the query text, written as an instruction folder (:mod:`cafe.data.pair_folder`)
that goes through the data stage like any other training data."""

from __future__ import annotations

from pathlib import Path

from cafe.serving.traffic import Window


def window_pairs(window: Window, gallery: dict[str, str]) -> tuple[list[dict], dict[str, int]]:
    """Pairs from the labelled searches, and counts (kept, unknown chosen item)."""
    pairs, unknown = [], 0
    for rec in window.labelled:
        path = gallery.get(rec["chosen"])
        if path is None:
            unknown += 1
            continue
        pairs.append({"id": f"traffic-{rec['request_id']}", "image": str(Path(path).resolve()), "caption": rec["query"]})
    return pairs, {"pairs": len(pairs), "unknown_chosen": unknown}

