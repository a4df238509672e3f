"""The shapes world as MMEB tasks, in VLM2Vec's record format (`cafe synth` writes ``eval/mmeb/``).

One JSON-lines file per task; each record is a query and its candidate list, the positive first, as VLM2Vec's
MMEB evaluation reads them::

    {"qry_inst": "...", "qry_text": "...", "qry_img_path": "images/ret000001.png",
     "tgt_inst": "...", "tgt_text": ["positive", "negative", ...], "tgt_img_path": ["", "", ...]}

An empty text or image path means the side has none. Image paths are relative to the folder's image root
(``meta.json``'s ``image_root``, relative to the folder). Tasks, one per MMEB meta-task kind:

- ``ShapesI2T`` (retrieval, image -> caption) and ``ShapesT2I`` (retrieval, caption -> image), other images'
  captions / images as the negatives;
- ``ShapesVQA`` (VQA as retrieval): image + question -> the answer among the answers of its kind;
- ``ShapesComposition`` (compositional): image -> its caption among SugarCrepe-style hard negatives (an
  attribute replaced or swapped, an object replaced or added).

Built from the evaluation files the world already wrote (retrieval_karpathy.json, annotations.json,
sugarcrepe/), from its own random stream, so no earlier file changes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FOLDER = "mmeb"
META = "meta.json"
FORMAT = "VLM2Vec MMEB: qry_inst/qry_text/qry_img_path, tgt_inst/tgt_text/tgt_img_path lists, positive first"
TASKS = {"ShapesI2T": "retrieval", "ShapesT2I": "retrieval", "ShapesVQA": "vqa", "ShapesComposition": "composition"}
NUMBERS = ("one", "two", "three", "four")


def _record(qry_inst: str, qry_text: str, qry_img: str, tgt_inst: str, texts: list[str], images: list[str]) -> dict:
    return {"qry_inst": qry_inst, "qry_text": qry_text, "qry_img_path": qry_img, "tgt_inst": tgt_inst,
            "tgt_text": texts, "tgt_img_path": images}


def _negatives(rng: random.Random, pool: list, positive, n: int) -> list:
    others = [x for x in pool if x != positive]
    return rng.sample(others, min(n, len(others)))


def shapes_tasks(eval_dir: Path, rng: random.Random, candidates: int = 100) -> dict[str, list[dict]]:
    """The four tasks as record lists, from the evaluation files under ``eval_dir``."""
    karpathy = json.loads((eval_dir / "retrieval_karpathy.json").read_text())["images"]
    annotations = json.loads((eval_dir / "annotations.json").read_text())
    paths = [f"{img['filepath']}/{img['filename']}" for img in karpathy]
    said = {p: [s["raw"] for s in img["sentences"]] for p, img in zip(paths, karpathy)}
    caption = {p: said[p][0] for p in paths}
    query_text = {p: said[p][min(1, len(said[p]) - 1)] for p in paths}
    n = candidates - 1
    tasks: dict[str, list[dict]] = {name: [] for name in TASKS}
    for p in paths:  # a negative never reads like the positive (two scenes can be described alike)
        pool = list(dict.fromkeys(caption[q] for q in paths if caption[q] not in said[p]))
        texts = [caption[p]] + _negatives(rng, pool, caption[p], n)
        tasks["ShapesI2T"].append(_record("Find a caption for the given image.", "", p, "", texts, [""] * len(texts)))
        images = [p] + _negatives(rng, [q for q in paths if query_text[p] not in said[q]], p, n)
        tasks["ShapesT2I"].append(_record("Find the image that matches the given caption.", query_text[p], "",
                                          "", [""] * len(images), images))

    colours = sorted({o["colour"] for objs in annotations.values() for o in objs})
    for p in paths:
        objects = annotations[p.rsplit("/", 1)[-1]]
        shapes = [o["shape"] for o in objects]
        unique = [o for o in objects if shapes.count(o["shape"]) == 1]
        if unique:
            o = rng.choice(unique)
            answers = [o["colour"]] + [c for c in colours if c != o["colour"]]
            tasks["ShapesVQA"].append(_record("Represent the given image with the following question:",
                                              f"What colour is the {o['shape']}?", p, "", answers, [""] * len(answers)))
        count = NUMBERS[len(objects) - 1]
        answers = [count] + [w for w in NUMBERS if w != count]
        tasks["ShapesVQA"].append(_record("Represent the given image with the following question:",
                                          "How many shapes are in the image?", p, "", answers, [""] * len(answers)))

    negatives: dict[str, list[str]] = {}
    truth: dict[str, str] = {}
    for subset_file in sorted((eval_dir / "sugarcrepe").glob("*.json")):
        for item in json.loads(subset_file.read_text()).values():
            negatives.setdefault(item["filename"], []).append(item["negative_caption"])
            truth[item["filename"]] = item["caption"]
    for p in paths:
        name = p.rsplit("/", 1)[-1]
        if name in truth and negatives.get(name):
            texts = [truth[name]] + list(dict.fromkeys(x for x in negatives[name] if x != truth[name]))
            tasks["ShapesComposition"].append(_record("Find the caption that describes the given image exactly.",
                                                      "", p, "", texts, [""] * len(texts)))
    return tasks


def write_mmeb(eval_dir: str | Path, rng: random.Random, candidates: int = 100) -> dict[str, int]:
    """Write ``<eval_dir>/mmeb/<task>.jsonl`` and ``meta.json``; returns the record count per task."""
    eval_dir = Path(eval_dir)
    out = eval_dir / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    tasks = shapes_tasks(eval_dir, rng, candidates)
    for name, records in tasks.items():
        tmp = out / f"{name}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(out / f"{name}.jsonl")
    meta = {"format": FORMAT, "image_root": "..", "tasks": {n: {"meta_task": TASKS[n], "records": len(r)}
                                                           for n, r in tasks.items()}}
    (out / META).write_text(json.dumps(meta, indent=1) + "\n")
    return {"mmeb_records": sum(len(r) for r in tasks.values())}
