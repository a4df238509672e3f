"""The traffic window as training data: every feedback-labelled search becomes an (image, caption) pair, the
chosen gallery image with the query text, in the pairs JSON-lines format `cafe train` reads."""

from __future__ import annotations

import json
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


def write_pairs(pairs: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    tmp.replace(out)
    return out
