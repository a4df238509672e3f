"""MMEB format: `cafe synth` writes the shapes world as VLM2Vec-style tasks (positive first), and the evaluation
part reads that format from any folder (JSON lines or parquet, VLM2Vec's image placeholders) and scores hit@1 as
VLM2Vec does (argmax over each query's own candidates == 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cafe.data.mmeb import TASKS
from cafe.evaluation.mmeb import evaluate_folder, load_tasks, mmeb_arrays, mmeb_metrics

KEYS = {"qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"}


def test_synth_writes_the_four_tasks_positive_first(world):
    folder = world / "eval" / "mmeb"
    meta = json.loads((folder / "meta.json").read_text())
    assert {n: t["meta_task"] for n, t in meta["tasks"].items()} == TASKS
    root, tasks = load_tasks(folder)
    assert set(tasks) == set(TASKS) and root == (world / "eval").resolve()
    karpathy = {i["filename"]: [s["raw"] for s in i["sentences"]]
                for i in json.loads((world / "eval" / "retrieval_karpathy.json").read_text())["images"]}
    annotations = json.loads((world / "eval" / "annotations.json").read_text())
    for name, records in tasks.items():
        assert records and all(set(r) == KEYS for r in records), name
        for r in records:
            assert len(r["tgt_text"]) == len(r["tgt_img_path"]) >= 2
            if r["qry_img_path"]:
                assert (root / r["qry_img_path"]).is_file()
    for r in tasks["ShapesI2T"]:
        image = Path(r["qry_img_path"]).name
        assert r["tgt_text"][0] == karpathy[image][0] and len(set(r["tgt_text"])) == len(r["tgt_text"])
        assert all(t not in karpathy[image] for t in r["tgt_text"][1:])
    for r in tasks["ShapesT2I"]:
        assert r["qry_text"] in karpathy[Path(r["tgt_img_path"][0]).name] and r["tgt_img_path"][0] not in r["tgt_img_path"][1:]
    for r in tasks["ShapesVQA"]:
        objects = annotations[Path(r["qry_img_path"]).name]
        if r["qry_text"].startswith("How many"):
            assert r["tgt_text"][0] == ["one", "two", "three"][len(objects) - 1]
        else:
            shape = r["qry_text"].removeprefix("What colour is the ").rstrip("?")
            assert r["tgt_text"][0] == next(o["colour"] for o in objects if o["shape"] == shape)
        assert r["tgt_text"][0] not in r["tgt_text"][1:]
    for r in tasks["ShapesComposition"]:
        assert r["tgt_text"][0] not in r["tgt_text"][1:] and len(r["tgt_text"]) >= 2


def _fake_embedders(vectors: dict):
    def lookup(keys):
        return torch.stack([torch.tensor(vectors[k], dtype=torch.float32) for k in keys])
    return (lambda paths: lookup([Path(p).name for p in paths]), lambda texts: lookup(texts),
            lambda paths, texts: lookup([f"{Path(p).name}|{t}" for p, t in zip(paths, texts)]))


def test_hit_at_1_as_vlm2vec_scores_it_from_any_folder(tmp_path):
    """A parquet and a JSON-lines task in a plain folder, MMEB-eval's own style (image placeholder in the text,
    no instructions): hit when the positive (first) candidate scores highest; a tie goes to the positive."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / name)
    records = [  # image -> text: positive wins / loses
        {"qry_text": "<|image_1|>", "qry_img_path": "imgs/a.png", "tgt_text": ["cat", "dog"], "tgt_img_path": ["", ""]},
        {"qry_text": "<|image_1|>", "qry_img_path": "imgs/b.png", "tgt_text": ["cat", "dog"], "tgt_img_path": ["", ""]},
    ]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "I2T.parquet")
    composed = [{"qry_text": "<|image_1|>\nwhat is it?", "qry_img_path": "imgs/a.png",
                 "tgt_text": ["cat", "cow"], "tgt_img_path": ["", ""]}]  # a tie: the positive counts
    (tmp_path / "VQA.jsonl").write_text("".join(json.dumps(r) + "\n" for r in composed))
    vectors = {"a.png": [1, 0], "b.png": [0.9, 0.1], "cat": [1, 0], "dog": [0, 1], "cow": [1, 0],
               "a.png|what is it?": [1, 0]}
    root, tasks = load_tasks(tmp_path)
    arrays, meta = mmeb_arrays(root, tasks, *_fake_embedders(vectors))
    assert meta["tasks"] == ["I2T", "VQA"]
    assert arrays["hit"].tolist() == [1.0, 1.0, 1.0]
    vectors["b.png"] = [0.1, 0.9]  # now b is closer to "dog": its query misses
    arrays, meta = mmeb_arrays(root, tasks, *_fake_embedders(vectors))
    assert mmeb_metrics(arrays, meta) == {"mmeb_I2T_hit@1": 0.5, "mmeb_VQA_hit@1": 1.0, "mmeb_hit@1": 0.75}

    (tmp_path / "Bad.jsonl").write_text(json.dumps({**records[0], "qry_img_path": "../outside.png"}) + "\n")
    root, tasks = load_tasks(tmp_path)
    with pytest.raises(ValueError, match="outside.png"):
        mmeb_arrays(root, tasks, *_fake_embedders(vectors))


def test_mmeb_part_of_cafe_evaluate_and_any_folder(world, params, adapter, tmp_path):
    from cafe.evaluation.evaluate import evaluate

    params.evaluate.parts, params.evaluate.cache_dir, params.evaluate.report = ["mmeb"], "", False
    params.evaluate.max_items = {"mmeb": 6}
    metrics = evaluate(adapter, params.evaluate, params.prompts, tmp_path / "eval")
    keys = {f"mmeb_{t}_hit@1" for t in TASKS} | {"mmeb_hit@1"}
    assert keys <= set(metrics) and all(0.0 <= metrics[k] <= 1.0 for k in keys)
    assert np.isclose(metrics["mmeb_hit@1"], np.mean([metrics[f"mmeb_{t}_hit@1"] for t in TASKS]))
    direct = evaluate_folder(adapter, world / "eval" / "mmeb", limit=6)
    assert all(np.isclose(direct[k], metrics[k]) for k in keys)  # the same scores without the Evaluator
    assert direct["mmeb_queries"] == 6 * len(TASKS)
