"""MMEB-format evaluation, scored as VLM2Vec's MMEB evaluation does: every query is compared with its own
candidate list (the positive first) and counts as a hit when the positive scores highest (hit@1, ``argmax ==
0``); a task's score is its hit rate, the overall score the mean over tasks.

Reads any folder of MMEB-style tasks: ``*.jsonl``, ``*.json`` (a list) or ``*.parquet`` files of records with
``qry_text``/``qry_img_path`` and ``tgt_text``/``tgt_img_path`` lists (``qry_inst``/``tgt_inst`` optional), with
images under the folder's image root (``meta.json``'s ``image_root``, else the folder). Image placeholders in the
text (``<|image_1|>``, ``<image>``) are dropped: the model's own embedding instruction places the image.

Zero-shot: the model embeds each side under its embedding contract (an image, a text, or an image with a text);
task instructions (``*_inst``) are not used, since the model was never trained with them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cafe.data.images import ImageRejected, safe_path

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
_PLACEHOLDER = re.compile(r"<\|image_\d+\|>|<image>")


def _read(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of MMEB records")
    return data


def load_tasks(folder: str | Path) -> tuple[Path, dict[str, list[dict]]]:
    """The image root and ``{task: records}`` of an MMEB-format folder (``meta.json`` is not a task)."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
    root = (folder / meta.get("image_root", ".")).resolve()
    tasks = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix in FILE_SUFFIXES and p.name != "meta.json"):
        records = _read(path)
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or not isinstance(rec.get("tgt_text"), list) or not rec["tgt_text"]:
                raise ValueError(f"{path} record {i}: needs a non-empty 'tgt_text' list (positive first)")
        tasks[path.name.split(".")[0]] = records
    if not tasks:
        raise FileNotFoundError(f"{folder}: no MMEB task files ({', '.join(FILE_SUFFIXES)})")
    return root, tasks


def _text(value) -> str:
    return _PLACEHOLDER.sub("", value or "").strip()


def sides(record: dict) -> tuple[tuple[str, str], list[tuple[str, str]]]:
    """``(text, image path)`` of the query and of each candidate ("" where a side has none)."""
    texts, images = record["tgt_text"], record.get("tgt_img_path") or [""] * len(record["tgt_text"])
    if len(images) != len(texts):
        raise ValueError("tgt_text and tgt_img_path differ in length")
    query = (_text(record.get("qry_text")), record.get("qry_img_path") or "")
    return query, [(_text(t), i or "") for t, i in zip(texts, images)]


def embed_items(items: list[tuple[str, str]], root: Path, embed_images: Callable, embed_texts: Callable,
                embed_image_texts: Callable) -> torch.Tensor:
    """Embeddings of unique ``(text, image)`` items: image only, text only, or both (a composed query)."""
    paths = {}
    for text, image in items:
        if image and image not in paths:
            try:
                paths[image] = str(safe_path(root, image))
            except ImageRejected as err:
                raise ValueError(f"MMEB image {image!r}: {err}") from None
    groups: dict[str, list[int]] = {"image": [], "text": [], "both": []}
    for n, (text, image) in enumerate(items):
        groups["both" if text and image else "image" if image else "text"].append(n)
    out: list[torch.Tensor | None] = [None] * len(items)
    parts = (("image", lambda idx: embed_images([paths[items[i][1]] for i in idx])),
             ("text", lambda idx: embed_texts([items[i][0] or " " for i in idx])),
             ("both", lambda idx: embed_image_texts([paths[items[i][1]] for i in idx], [items[i][0] for i in idx])))
    for kind, fn in parts:
        if groups[kind]:
            for i, row in zip(groups[kind], fn(groups[kind])):
                out[i] = row
    return torch.stack(out)


def mmeb_arrays(root: Path, tasks: dict[str, list[dict]], embed_images: Callable, embed_texts: Callable,
                embed_image_texts: Callable, limit: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Per query: the task index and whether the positive (candidate 0) scored highest."""
    names = sorted(tasks)
    queries, candidates, task_of = [], [], []
    for t, name in enumerate(names):
        for record in tasks[name][:limit or None]:
            q, c = sides(record)
            queries.append(q)
            candidates.append(c)
            task_of.append(t)
    unique = list(dict.fromkeys([*queries, *(x for c in candidates for x in c)]))
    where = {item: i for i, item in enumerate(unique)}
    emb = embed_items(unique, root, embed_images, embed_texts, embed_image_texts).float()
    hits = []
    for q, cands in zip(queries, candidates):
        scores = emb[[where[c] for c in cands]] @ emb[where[q]]
        hits.append(int(torch.argmax(scores)) == 0)  # VLM2Vec: a tie goes to the first (the positive)
    return {"task": np.asarray(task_of), "hit": np.asarray(hits, dtype=np.float64)}, {"tasks": names}


def mmeb_metrics(a: dict[str, np.ndarray], meta: dict) -> dict[str, float]:
    out, means = {}, []
    for t, name in enumerate(meta["tasks"]):
        hits = a["hit"][a["task"] == t]
        if len(hits):
            out[f"mmeb_{name}_hit@1"] = float(hits.mean())
            means.append(out[f"mmeb_{name}_hit@1"])
    out["mmeb_hit@1"] = float(np.mean(means)) if means else float("nan")
    return out


def evaluate_folder(adapter, folder: str | Path, batch_size: int = 32, limit: int | None = None) -> dict[str, float]:
    """hit@1 per task and overall of ``adapter`` on an MMEB-format folder (no Evaluator, no cache)."""
    from PIL import Image

    def load(paths):
        out = []
        for p in paths:
            with Image.open(p) as img:
                out.append(img.convert("RGB"))
        return out

    def chunked(fn, *columns):
        return torch.cat([fn(*(c[lo:lo + batch_size] for c in columns)) for lo in range(0, len(columns[0]), batch_size)])

    root, tasks = load_tasks(folder)
    arrays, meta = mmeb_arrays(
        root, tasks, lambda paths: chunked(lambda p: adapter.encode_images(load(p), batch_size), paths),
        lambda texts: chunked(lambda t: adapter.encode_texts(t, batch_size), texts),
        lambda paths, texts: chunked(lambda p, t: adapter.encode_image_texts(load(p), t, batch_size), paths, texts),
        limit)
    return mmeb_metrics(arrays, meta) | {"mmeb_queries": float(len(arrays["hit"]))}
