"""(image, caption) pairs as a self-contained LLaVA-OneVision instruction folder, and that folder through the
data stage: ``instructions.json`` (``id``, ``image`` relative to the folder, a caption-prompt / caption
conversation) plus the images copied under ``images/``, so the folder can be uploaded and given to the
training pipeline as its ``data_uri``, or repurposed here into the Parquet shards training reads. The traffic
window's feedback pairs and the drift scenario's training pairs take this one path."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterable

from cafe.config import RepurposeConfig

INSTRUCTIONS = "instructions.json"


def write_pair_folder(pairs: Iterable[dict], folder: str | Path, prompt: str) -> int:
    """``pairs`` (``id``, ``image`` path, ``caption``) -> ``folder/instructions.json`` + ``folder/images/``;
    returns the number of records written. Each image is copied once, named by its content hash (two
    pairs of one image share the copy). The folder is replaced."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    copied: dict[str, str] = {}
    records = []
    for pair in pairs:
        src = str(pair["image"])
        if src not in copied:
            data = Path(src).read_bytes()
            name = f"images/{hashlib.sha256(data).hexdigest()[:20]}{Path(src).suffix.lower()}"
            (tmp / name).write_bytes(data)
            copied[src] = name
        records.append({"id": pair["id"], "image": copied[src],
                        "conversations": [{"from": "human", "value": f"<image>\n{prompt}"},
                                          {"from": "gpt", "value": pair["caption"]}]})
    (tmp / INSTRUCTIONS).write_text(json.dumps(records, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(folder)
    return len(records)


def count_records(folder: str | Path) -> int:
    """How many records the folder's ``instructions.json`` holds (0 when there is none)."""
    path = Path(folder) / INSTRUCTIONS
    return len(json.loads(path.read_text())) if path.is_file() else 0


def repurpose_folder(cfg: RepurposeConfig, folder: str | Path, out: str | Path) -> dict:
    """The folder through `cafe repurpose` (``cfg``'s rules, one source: the folder) -> shards at ``out``;
    returns the stage's stats (``data_version`` among them)."""
    from cafe.data.repurpose import repurpose

    folder = Path(folder)
    return repurpose(cfg.model_copy(update={"mixture": "", "input": str(folder / INSTRUCTIONS),
                                            "image_root": str(folder), "out": str(out)}))
