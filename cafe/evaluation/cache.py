"""On-disk embedding cache, keyed by model and data, so re-evaluating a model does not re-embed.

Key = (model fingerprint, kind, data fingerprint):
- model: for a checkpoint directory, its config, the (name, size, mtime) of its weight files, and the
  prompts and model settings that change what an embedding is; for an in-memory model, a hash of its
  weights (cheap for small models, exact for all);
- data: for images, the (path, size, mtime) of each file in order; for texts, a hash of the texts in order.

Entries are written atomically (temporary file, then rename), so an interrupted run leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _sha(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:24]


def model_fingerprint(model=None, path: str | Path | None = None, settings: dict | None = None) -> str:
    """Identity of a model for caching: path + mtime + config for a local checkpoint, else a weights hash."""
    extra = json.dumps(settings or {}, sort_keys=True, default=str)
    local = Path(path) if path is not None else None
    if local is not None and local.is_dir():
        config = (local / "config.json").read_bytes() if (local / "config.json").is_file() else b""
        files = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                 for p in sorted(local.iterdir()) if p.suffix in WEIGHT_SUFFIXES]
        return _sha("dir", str(local.resolve()), config, *files, extra)
    if model is None:
        return _sha("id", str(path), extra)
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return _sha("weights", h.hexdigest(), extra)


def files_fingerprint(paths: Sequence[str | Path]) -> str:
    parts = []
    for p in paths:
        st = os.stat(p)
        parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return _sha("files", *parts)


def texts_fingerprint(texts: Sequence[str]) -> str:
    return _sha("texts", json.dumps(list(texts)))


class EmbeddingCache:
    """Embeddings stored as ``<root>/<model key>/<kind>-<data key>.pt``; ``root=None`` disables caching."""

    def __init__(self, root: str | Path | None, model_key: str):
        self.root = Path(root) / model_key if root else None
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, data_key: str) -> Path | None:
        return self.root / f"{kind}-{data_key}.pt" if self.root is not None else None

    def get_or_compute(self, kind: str, data_key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        path = self.path(kind, data_key)
        if path is not None and path.is_file():
            self.hits += 1
            return torch.load(path, map_location="cpu", weights_only=True)
        self.misses += 1
        value = compute().detach().to("cpu").contiguous()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(value, tmp)
            tmp.replace(path)
        return value
