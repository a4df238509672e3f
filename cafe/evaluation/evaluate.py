"""`cafe evaluate`: the evaluation suite of one model on the held-out sets, each in its public format.

Parts (``evaluate.parts``): zero-shot retrieval (Karpathy split), brief-caption objects, POPE, THRONE-style
free-form hallucination, SugarCrepe, MMStar-format multiple choice, and the embedding geometry (modality
gap, effective rank, explained variance, 2-D scatter). Writes, under the output folder:

- ``metrics.json``: one number per key (keys documented in :mod:`cafe.evaluation.per_item`);
- ``per_item.npz``: the per-item results every metric is computed from (the gate's bootstrap reads them);
- ``details.json``: THRONE class-wise numbers, item counts, timings, embedding-cache hits, a few example
  retrievals (caption -> top-5 images, for the report), the folder of each generative part's images
  (``reply_images``, for the report's thumbnails beside the example replies);
- ``replies.jsonl``: every reply of every generative part (captions, POPE, THRONE, MMStar), one line each:
  ``{"id", "part", "image", "prompt", "reply", "parsed", "correct"}`` (:data:`REPLY_FIELDS`);
- ``generations.jsonl`` (brief captions), ``descriptions.jsonl`` (THRONE), ``plots/*.png``;
- ``report.md`` and ``report.html`` (self-contained) when ``evaluate.report`` is on.

Image and text embeddings go through an on-disk cache keyed by model and data (``evaluate.cache_dir``),
so evaluating the same checkpoint again does not embed again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cafe.config import EvalConfig, PromptConfig
from cafe.data.mmeb import FOLDER as mmeb_folder
from cafe.data.shapes import COLOURS, SHAPES
from cafe.evaluation import geometry, mmeb, mmstar, pope, sugarcrepe, throne
from cafe.evaluation.cache import EmbeddingCache, files_fingerprint, model_fingerprint, texts_fingerprint
from cafe.evaluation.generation import parse_objects
from cafe.evaluation.per_item import PerItem, explained_variance, throne_classwise
from cafe.evaluation.retrieval import load_karpathy, retrieval_ranks, text_to_image_examples
from cafe.models.adapter import VLMAdapter

# metrics.json keys, in the order reports show them (the core keys first; every part adds its own)
METRIC_KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
               "object_precision", "object_recall", "object_f1", "probe_accuracy", "probe_f1", "probe_yes_ratio",
               "modality_gap")
# one line of replies.jsonl; "parsed" is what the part's parser read (objects named, yes/no/other, the
# option letter or null), "correct" whether it is right
REPLY_FIELDS = ("id", "part", "image", "prompt", "reply", "parsed", "correct")


def _load_images(paths: Sequence[str | Path]) -> list[Image.Image]:
    out = []
    for p in paths:
        with Image.open(p) as img:
            out.append(img.convert("RGB"))
    return out


def _cap(items: list, limit: int | None) -> list:
    return items[:limit] if limit else items


class Evaluator:
    """Runs the configured parts for one adapter; embeddings and generations are batched and cached."""

    def __init__(self, adapter: VLMAdapter, cfg: EvalConfig, prompts: PromptConfig, model_path: str | Path | None = None):
        self.adapter, self.cfg, self.prompts = adapter, cfg, prompts
        self.data = Path(cfg.data)
        key = model_fingerprint(adapter.model, model_path, {
            "prompts": prompts.model_dump(), "dtype": adapter.model_cfg.dtype,
            "padding": adapter.model_cfg.embed_padding_side, "family": adapter.model_cfg.family})
        self.cache = EmbeddingCache(cfg.cache_dir or None, key)
        self.per_item = PerItem()
        self.details: dict = {"counts": {}, "seconds": {}}
        self.outputs: dict[str, list[dict]] = {}
        self.replies: list[dict] = []
        self.embeddings: dict[str, torch.Tensor] = {}
        self._image_memo: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ model calls
    def embed_images(self, paths: list[str], desc: str) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(paths) if p not in self._image_memo]
        if missing:
            def compute() -> torch.Tensor:
                chunks = []
                for lo in tqdm(range(0, len(missing), self.cfg.batch_size), desc=f"{desc}: embed images",
                               leave=False, mininterval=1.0):
                    chunks.append(self.adapter.encode_images(_load_images(missing[lo:lo + self.cfg.batch_size]),
                                                             self.cfg.batch_size).cpu())
                return torch.cat(chunks)

            emb = self.cache.get_or_compute("images", files_fingerprint(missing), compute)
            self._image_memo.update(zip(missing, emb))
        return torch.stack([self._image_memo[p] for p in paths])

    def embed_texts(self, texts: list[str], desc: str) -> torch.Tensor:
        def compute() -> torch.Tensor:
            bs = 2 * self.cfg.batch_size
            return torch.cat([self.adapter.encode_texts(texts[lo:lo + bs], bs).cpu()
                              for lo in tqdm(range(0, len(texts), bs), desc=f"{desc}: embed texts", leave=False,
                                             mininterval=1.0)])

        return self.cache.get_or_compute("texts", texts_fingerprint(texts), compute)

    def generate(self, images: list[str | Image.Image], prompts: list[str], max_new_tokens: int, desc: str) -> list[str]:
        """Greedy answers, batch by batch (images loaded per batch, so memory stays flat)."""
        answers: list[str] = []
        bs = self.cfg.batch_size
        for lo in tqdm(range(0, len(images), bs), desc=desc, leave=False, mininterval=1.0):
            batch = images[lo:lo + bs]
            loaded = [im if isinstance(im, Image.Image) else _load_images([im])[0] for im in batch]
            answers += self.adapter.generate(loaded, prompts[lo:lo + bs], max_new_tokens=max_new_tokens)
        return answers

    def limit(self, part: str) -> int | None:
        return self.cfg.max_items.get(part) or None

    def _replies(self, part: str, ids, images, prompts, replies, parsed, correct, folder: str | None = None) -> None:
        """The part's rows of replies.jsonl; details.json's ``reply_images`` keeps the folder of their images
        (``folder``, default the world's ``images/``; "" when they lie in several), for the report's thumbnails."""
        self.details.setdefault("reply_images", {})[part] = str(self.data / "images") if folder is None else folder
        self.replies += [dict(zip(REPLY_FIELDS, (i, part, Path(str(im)).name, p, r, a, bool(c))))
                         for i, im, p, r, a, c in zip(ids, images, prompts, replies, parsed, correct)]

    def seen_texts(self) -> set[str] | None:
        """Caption texts of this world that are also training replies (``overlap.json`` of `cafe synth`)."""
        path = self.data / "overlap.json"
        return set(json.loads(path.read_text()).get("seen_caption_texts", [])) if path.is_file() else None

    # ------------------------------------------------------------------ parts
    def retrieval(self) -> None:
        image_paths, captions, owner = load_karpathy(self.data / "retrieval_karpathy.json")
        n = self.limit("retrieval")
        if n and n < len(image_paths):
            keep = [i for i, o in enumerate(owner) if o < n]
            image_paths, captions, owner = image_paths[:n], [captions[i] for i in keep], [owner[i] for i in keep]
        image_emb = self.embed_images(image_paths, "retrieval")
        text_emb = self.embed_texts(captions, "retrieval")
        i2t, t2i = retrieval_ranks(image_emb, text_emb, owner, self.cfg.similarity_chunk)
        arrays = {"i2t_rank": i2t.numpy(), "t2i_rank": t2i.numpy()}
        seen = self.seen_texts()
        if seen is not None:
            arrays["t2i_seen"] = np.array([c in seen for c in captions], dtype=np.int8)
            arrays["i2t_seen"] = np.zeros(len(image_paths), dtype=np.int8)
            np.maximum.at(arrays["i2t_seen"], owner, arrays["t2i_seen"])
        self.per_item.add("retrieval", {"ks": list(self.cfg.recall_ks)}, **arrays)
        self.embeddings.update(image=image_emb, text=text_emb)
        self.details["counts"]["retrieval"] = {"images": len(image_paths), "captions": len(captions)}
        self.details["retrieval_examples"] = text_to_image_examples(image_emb, text_emb, owner, image_paths, captions)

    def geometry(self) -> None:
        if "image" not in self.embeddings:
            self.retrieval()
        rng = np.random.default_rng(0)
        kept = {}
        for name in ("image", "text"):
            emb = self.embeddings[name].numpy()
            if len(emb) > self.cfg.geometry_max_points:
                emb = emb[np.sort(rng.choice(len(emb), self.cfg.geometry_max_points, replace=False))]
            kept[name] = emb.astype(np.float32)
        self.per_item.add("geometry", {"cev_k": 10}, image_emb=kept["image"], text_emb=kept["text"])
        scatter, method = geometry.scatter_png(kept["image"], kept["text"], self.cfg.scatter_method)
        curves = {f"{n} embeddings": explained_variance(kept[n]) for n in ("image", "text")}
        self.plots = {"embedding_scatter.png": scatter,
                      "explained_variance.png": geometry.curves_png(curves, "cumulative explained variance")}
        self.details["scatter_method"] = method

    def captions(self) -> None:
        image_paths, _, _ = load_karpathy(self.data / "retrieval_karpathy.json")
        image_paths = _cap(image_paths, self.limit("captions"))
        annotations = json.loads((self.data / "annotations.json").read_text())
        generated = self.generate(image_paths, [self.prompts.caption] * len(image_paths), self.cfg.max_new_tokens,
                                  "brief captions")
        truth = [{(o["colour"], o["shape"]) for o in annotations[Path(p).name]} for p in image_paths]
        predicted = [parse_objects(text, COLOURS, SHAPES) for text in generated]
        self.per_item.add("captions", tp=[len(p & t) for p, t in zip(predicted, truth)],
                          n_pred=[len(p) for p in predicted], n_true=[len(t) for t in truth],
                          empty=np.array([not text.strip() for text in generated], dtype=np.int8))
        names = [Path(p).name for p in image_paths]
        folders = {str(Path(p).parent) for p in image_paths}
        self._replies("captions", names, names, [self.prompts.caption] * len(names), generated,
                      [sorted(map(" ".join, p)) for p in predicted], [p == t for p, t in zip(predicted, truth)],
                      folders.pop() if len(folders) == 1 else "")
        self.outputs["generations.jsonl"] = [
            {"image": Path(p).name, "caption": text, "objects": sorted(map(" ".join, objs))}
            for p, text, objs in zip(image_paths, generated, truth)]
        self.details["counts"]["captions"] = len(image_paths)

    def pope(self) -> None:
        questions = pope.load_pope(self.data)
        n = self.limit("pope")
        if n:  # at most n per split
            questions = [q for split in dict.fromkeys(q.split for q in questions)
                         for q in [q for q in questions if q.split == split][:n]]
        answers = self.generate([str(self.data / "images" / q.image) for q in questions], [q.text for q in questions],
                                self.cfg.choice_max_new_tokens, "POPE")
        arrays, meta = pope.pope_arrays(questions, answers)
        self.per_item.add("pope", meta, **arrays)
        kinds = [pope.answer_kind(a) for a in answers]
        self._replies("pope", [q.question_id for q in questions], [q.image for q in questions],
                      [q.text for q in questions], answers, kinds,
                      [pope.parse_answer(a) == q.label for a, q in zip(answers, questions)])
        self.details["counts"]["pope"] = len(questions)

    def throne(self) -> None:
        vocab_path = Path(self.cfg.throne_vocabulary) if self.cfg.throne_vocabulary else self.data / "throne" / "vocabulary.json"
        vocab = throne.Vocabulary.load(vocab_path)
        records = _cap(throne.load_annotations(self.data / "throne" / "annotations.json"), self.limit("throne"))
        texts = self.generate([str(self.data / "images" / r["image"]) for r in records],
                              [self.cfg.detail_prompt] * len(records), self.cfg.detail_max_new_tokens,
                              "THRONE descriptions")
        arrays, meta = throne.throne_arrays(texts, [r["objects"] for r in records], vocab)
        arrays["empty"] = np.array([not t.strip() for t in texts], dtype=np.int8)
        self.per_item.add("throne", meta, **arrays)
        named = [sorted(vocab.classes[c] for c in vocab.find(t)) for t in texts]
        self._replies("throne", [r["image"] for r in records], [r["image"] for r in records],
                      [self.cfg.detail_prompt] * len(records), texts, named,
                      [n == sorted(set(r["objects"])) for n, r in zip(named, records)])
        self.details["throne_classes"] = throne_classwise(arrays, meta["classes"])
        self.outputs["descriptions.jsonl"] = [{"image": r["image"], "description": t, "objects": r["objects"]}
                                              for r, t in zip(records, texts)]
        self.details["counts"]["throne"] = len(records)

    def sugarcrepe(self) -> None:
        items = sugarcrepe.load_sugarcrepe(self.data / "sugarcrepe")
        n = self.limit("sugarcrepe")
        if n:  # at most n per subset
            items = [i for s in dict.fromkeys(i.subset for i in items) for i in [i for i in items if i.subset == s][:n]]
        image_emb = self.embed_images([str(self.data / "images" / i.filename) for i in items], "SugarCrepe")
        texts = self.embed_texts([i.caption for i in items] + [i.negative for i in items], "SugarCrepe")
        arrays, meta = sugarcrepe.sugarcrepe_arrays(items, image_emb, texts[:len(items)], texts[len(items):])
        self.per_item.add("sugarcrepe", meta, **arrays)
        self.details["counts"]["sugarcrepe"] = len(items)

    def mmstar(self) -> None:
        questions = _cap(mmstar.load_mmstar(self.data / "mmstar.jsonl"), self.limit("mmstar"))
        images = [mmstar.load_image(q.image, self.data / "images") for q in questions]
        replies = self.generate(images, [q.question for q in questions], self.cfg.choice_max_new_tokens, "MMStar")
        arrays, meta = mmstar.mmstar_arrays(questions, replies)
        self.per_item.add("mmstar", meta, **arrays)
        self._replies("mmstar", [q.index for q in questions],
                      [q.image if len(q.image) < 512 else "<base64>" for q in questions],
                      [q.question for q in questions], replies,
                      [mmstar.parse_choice(r, mmstar.options(q.question)) for q, r in zip(questions, replies)],
                      arrays["correct"])
        self.details["counts"]["mmstar"] = len(questions)

    def mmeb(self) -> None:
        root, tasks = mmeb.load_tasks(self.data / mmeb_folder)
        arrays, meta = mmeb.mmeb_arrays(root, tasks, lambda p: self.embed_images(p, "MMEB"),
                                        lambda t: self.embed_texts(t, "MMEB"),
                                        lambda p, t: self.adapter.encode_image_texts(_load_images(p), t),
                                        self.limit("mmeb"))
        self.per_item.add("mmeb", meta, **arrays)
        self.details["counts"]["mmeb"] = {name: len(records) for name, records in tasks.items()}

    # ------------------------------------------------------------------ driver
    def run(self) -> dict[str, float]:
        self.adapter.model.eval()
        self.plots: dict[str, bytes] = {}
        order = [p for p in ("retrieval", "geometry", "captions", "pope", "throne", "sugarcrepe", "mmstar", "mmeb")
                 if p in self.cfg.parts]
        for part in tqdm(order, desc="evaluate", leave=False):
            start = time.perf_counter()
            getattr(self, part)()
            self.details["seconds"][part] = round(time.perf_counter() - start, 2)
        self.details["embedding_cache"] = {"hits": self.cache.hits, "misses": self.cache.misses,
                                           "dir": str(self.cache.root) if self.cache.root else None}
        metrics = self.per_item.metrics()
        return {k: metrics[k] for k in METRIC_KEYS if k in metrics} | {k: v for k, v in metrics.items() if k not in METRIC_KEYS}

    def write(self, out_dir: str | Path, metrics: dict[str, float]) -> Path:
        out = Path(out_dir)
        (out / "plots").mkdir(parents=True, exist_ok=True)
        _atomic_text(out / "metrics.json", json.dumps(metrics, indent=1))
        self.per_item.save(out / "per_item.npz")
        _atomic_text(out / "details.json", json.dumps(self.details, indent=1))
        for name, rows in {**self.outputs, "replies.jsonl": self.replies}.items():
            _atomic_text(out / name, "".join(json.dumps(r) + "\n" for r in rows))
        for name, png in self.plots.items():
            (out / "plots" / name).write_bytes(png)
        return out


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def evaluate(adapter: VLMAdapter, cfg: EvalConfig, prompts: PromptConfig, out_dir: str | Path | None = None, *,
             model_path: str | Path | None = None, compare: dict[str, str | Path] | None = None) -> dict:
    """Compute the metrics; with ``out_dir``, also write metrics.json, per-item results, outputs, plots and
    (``cfg.report``) the report, comparing with the runs in ``compare`` (name -> evaluation folder)."""
    evaluator = Evaluator(adapter, cfg, prompts, model_path)
    metrics = evaluator.run()
    if out_dir is not None:
        out = evaluator.write(out_dir, metrics)
        if cfg.report:
            from cafe.evaluation.report import write_report

            write_report({**(compare or {}), out.name or "model": out}, out)
    return metrics
