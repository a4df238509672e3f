"""The monitor's reference for one model version, built when it is registered and stored with it.

From a labelled Karpathy-split set (the evaluation retrieval set by default) the first ``probe_images`` images
are the fixed **probe set** and the next ``reference_images`` the **validation set**:

- validation: image and text embeddings (one phrasing per image), the top-1 similarity of every text query
  against the validation images, and its text->image R@K / MRR@top_k (what feedback R@K is compared with);
- probe: text->image R@K / MRR on every caption (re-measured with the served model at each monitor run);
- the modality gap of the validation embeddings.

Files: ``reference.json`` (metrics, statistics, settings) and ``reference.npz`` (embeddings, top-1 scores);
registered as ``monitor/reference.{json,npz}`` next to the model.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch

from cafe.config import MonitorConfig
from cafe.evaluation.retrieval import load_karpathy, modality_gap, retrieval_ranks
from cafe.serving.index import embed_images

FILES = ("reference.json", "reference.npz")
REGISTRY_DIR = "monitor"


def ranking_metrics(ranks0: torch.Tensor | np.ndarray, k: int, top_k: int) -> dict[str, float]:
    """R@k and MRR@top_k from 0-based ranks of the correct item (ranks past ``top_k`` count as misses)."""
    r = np.asarray(ranks0, dtype=float)
    if not len(r):
        return {f"R@{k}": float("nan"), "MRR": float("nan"), "n": 0}
    rr = np.where(r < top_k, 1.0 / (r + 1.0), 0.0)
    return {f"R@{k}": float((r < k).mean()), "MRR": float(rr.mean()), "n": int(len(r))}


def _split(path: str | Path, probe_images: int, reference_images: int):
    images, captions, owner = load_karpathy(path)
    n_probe = min(probe_images, len(images) // 2) if probe_images else len(images) // 2
    probe = (images[:n_probe], [(c, o) for c, o in zip(captions, owner) if o < n_probe])
    val_images = images[n_probe:n_probe + reference_images]
    val = (val_images, [(c, o - n_probe) for c, o in zip(captions, owner) if n_probe <= o < n_probe + len(val_images)])
    return probe, val


def probe_metrics(adapter, cfg: MonitorConfig, top_k: int, batch_size: int = 64) -> dict[str, float]:
    """Text->image R@K / MRR on the probe set, embedded with ``adapter`` now."""
    (images, pairs), _ = _split(cfg.probe, cfg.probe_images, cfg.reference_images)
    img = embed_images(adapter, images, batch_size, desc="probe images")
    txt = adapter.encode_texts([c for c, _ in pairs])
    _, t2i = retrieval_ranks(img, txt, [o for _, o in pairs])
    return ranking_metrics(t2i, cfg.recall_k, top_k)


def build_reference(adapter, cfg: MonitorConfig, top_k: int, batch_size: int = 64, seed: int = 0) -> tuple[dict, dict]:
    """``(meta, arrays)`` of the reference (see the module docstring)."""
    _, (images, pairs) = _split(cfg.probe, cfg.probe_images, cfg.reference_images)
    if not images:
        raise ValueError(f"monitor.probe={cfg.probe}: no images left for the validation set after "
                         f"{cfg.probe_images} probe images; use a larger set or fewer probe images")
    rng = random.Random(seed)
    by_image: dict[int, list[str]] = {}
    for caption, owner in pairs:
        by_image.setdefault(owner, []).append(caption)
    queries = [rng.choice(by_image[i]) for i in range(len(images))]
    img = embed_images(adapter, images, batch_size, desc="reference images")
    txt = adapter.encode_texts(queries)
    scores = txt @ img.T
    top1 = scores.max(dim=1).values
    _, t2i = retrieval_ranks(img, txt, list(range(len(images))))
    probe = probe_metrics(adapter, cfg, top_k, batch_size) if cfg.probe_images else None
    meta = {
        "recall_k": cfg.recall_k, "top_k": top_k, "source": str(cfg.probe),
        "validation": {"images": len(images), **ranking_metrics(t2i, cfg.recall_k, top_k)},
        "probe": probe,
        "modality_gap": modality_gap(img, txt),
        "top1_score": {"mean": float(top1.mean()), "std": float(top1.std()),
                       "quantiles": {str(q): float(top1.quantile(q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}},
        "dim": int(img.shape[1]),
    }
    arrays = {"image_embeddings": img.numpy().astype(np.float32), "text_embeddings": txt.numpy().astype(np.float32),
              "top1_scores": top1.numpy().astype(np.float32)}
    return meta, arrays


def save_reference(meta: dict, arrays: dict, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "reference.npz", **arrays)
    (out / "reference.json").write_text(json.dumps(meta, indent=1))
    return registry_files(out)


def registry_files(directory: str | Path) -> dict[str, Path]:
    """``extra_files`` for :meth:`Registry.register`: the reference under ``monitor/``."""
    directory = Path(directory)
    missing = [f for f in FILES if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: no monitor reference ({', '.join(missing)} missing); "
                                "build it with `cafe monitor reference -m MODEL -o DIR`")
    return {f"{REGISTRY_DIR}/{f}": directory / f for f in FILES}


def load_reference(directory: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    directory = Path(directory)
    registry_files(directory)
    with np.load(directory / "reference.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads((directory / "reference.json").read_text()), arrays


def fetch_reference(registry, name: str, ref: str | int) -> tuple[dict, dict[str, np.ndarray], dict]:
    """The reference stored with a registered version (only its two files are read), and the version record."""
    import hashlib

    record = registry.show(name, ref)
    blobs = {}
    for f in FILES:
        rel = f"{REGISTRY_DIR}/{f}"
        if rel not in record["files"]:
            raise FileNotFoundError(f"{name} v{record['version']} was registered without a monitor reference "
                                    f"({rel}); register with --reference DIR, or pass `cafe monitor --reference DIR`")
        data = registry.store.get_bytes(f"{record['prefix']}/{rel}")
        if hashlib.sha256(data).hexdigest() != record["files"][rel]["sha256"]:
            raise ValueError(f"{name} v{record['version']}: {rel} does not match its registered sha256")
        blobs[f] = data
    with np.load(io.BytesIO(blobs["reference.npz"])) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads(blobs["reference.json"]), arrays, record
