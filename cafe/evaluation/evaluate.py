"""`cafe evaluate`: retrieval, generation and probes of one model on the held-out shapes-world sets."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from cafe.config import EvalConfig, PromptConfig
from cafe.data.shapes import COLOURS, SHAPES
from cafe.evaluation.generation import object_prf, parse_objects, yes_no_scores
from cafe.evaluation.retrieval import load_karpathy, modality_gap, recall_at_k
from cafe.models.adapter import VLMAdapter

# metrics.json keys, in the order reports show them
METRIC_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
               "object_precision", "object_recall", "object_f1", "probe_accuracy", "probe_f1", "probe_yes_ratio",
               "modality_gap")


def _load_images(paths: list[str]) -> list[Image.Image]:
    out = []
    for p in paths:
        with Image.open(p) as img:
            out.append(img.convert("RGB"))
    return out


def _batched_generate(adapter: VLMAdapter, images, prompts, cfg: EvalConfig, desc: str, max_new_tokens: int):
    answers: list[str] = []
    for lo in tqdm(range(0, len(images), cfg.batch_size), desc=desc, leave=False, mininterval=1.0):
        answers += adapter.generate(images[lo:lo + cfg.batch_size], prompts[lo:lo + cfg.batch_size],
                                    max_new_tokens=max_new_tokens)
    return answers


def evaluate(adapter: VLMAdapter, cfg: EvalConfig, prompts: PromptConfig, out_dir: str | Path | None = None) -> dict:
    """Compute the metrics; with ``out_dir``, also write ``metrics.json`` and ``generations.jsonl``."""
    data = Path(cfg.data)
    adapter.model.eval()
    image_paths, captions, owner = load_karpathy(data / "retrieval_karpathy.json")
    images = _load_images(image_paths)
    with torch.no_grad():
        image_emb = adapter.encode_images(images, cfg.batch_size).cpu()
        text_emb = adapter.encode_texts(captions, cfg.batch_size).cpu()
    metrics: dict[str, float] = recall_at_k(image_emb, text_emb, owner, cfg.recall_ks)
    metrics["modality_gap"] = modality_gap(image_emb, text_emb)

    annotations = json.loads((data / "annotations.json").read_text())
    generated = _batched_generate(adapter, images, [prompts.caption] * len(images), cfg, "captions", cfg.max_new_tokens)
    truth = [{(o["colour"], o["shape"]) for o in annotations[Path(p).name]} for p in image_paths]
    predicted = [parse_objects(text, COLOURS, SHAPES) for text in generated]
    metrics.update({f"object_{k}": v for k, v in object_prf(predicted, truth).items()})

    probes = [json.loads(line) for line in (data / "pope.jsonl").read_text().splitlines() if line.strip()]
    probe_images = _load_images([str(data / "images" / q["image"]) for q in probes])
    answers = _batched_generate(adapter, probe_images, [q["text"] for q in probes], cfg, "probes", 4)
    scores = yes_no_scores(answers, [q["label"] for q in probes])
    metrics.update({"probe_accuracy": scores["accuracy"], "probe_f1": scores["f1"], "probe_yes_ratio": scores["yes_ratio"]})
    metrics = {k: metrics[k] for k in METRIC_KEYS if k in metrics} | {k: v for k, v in metrics.items() if k not in METRIC_KEYS}

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        with (out / "generations.jsonl").open("w") as fh:
            for path, text, objs in zip(image_paths, generated, truth):
                fh.write(json.dumps({"image": Path(path).name, "caption": text, "objects": sorted(map(" ".join, objs))}) + "\n")
    return metrics
