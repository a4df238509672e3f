"""Gallery index: the stored image embeddings a served version searches, one set per model version.

Embeddings of one version are meaningless to another, so the index is keyed by the model (``<name>-v<N>`` for
a registered version) and the gallery's content. Promoting a new version to production records in the alias
history that its gallery embeddings must be recomputed (``reindex_required``); ``cafe index`` recomputes them
and :func:`reindex_status` says whether that is still pending. Layout under the index store::

    <model key>/<gallery digest>/embeddings.npy   float32 [N, D], L2-normalised
    <model key>/<gallery digest>/index.json       ids, image paths, model, count; written last
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cafe.storage import ObjectStore, join, open_store

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def gallery_items(path: str | Path) -> list[tuple[str, str]]:
    """``(id, image path)`` of a gallery: a Karpathy-split JSON (id = file name) or a folder of images
    (id = path relative to the folder)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        items = [(p.relative_to(path).as_posix(), str(p)) for p in files]
    elif path.is_file():
        from cafe.evaluation.retrieval import load_karpathy

        items = [(Path(p).name, p) for p in load_karpathy(path)[0]]
    else:
        raise FileNotFoundError(f"gallery {path}: neither a Karpathy JSON nor a folder of images")
    if not items:
        raise ValueError(f"gallery {path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return items


def gallery_digest(items: list[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def model_key(name: str, version: int | str) -> str:
    return f"{name}-v{str(version).lstrip('v')}"


@dataclass
class Index:
    ids: list[str]
    paths: list[str]
    embeddings: torch.Tensor  # [N, D] float32, normalised
    model: str

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` gallery ids and cosine similarities for each query row."""
        scores = queries.float() @ self.embeddings.T
        top = scores.topk(min(k, len(self.ids)), dim=1)
        return [[(self.ids[j], float(s)) for s, j in zip(row_s, row_i)]
                for row_s, row_i in zip(top.values.tolist(), top.indices.tolist())]

    def path_of(self, item_id: str) -> str | None:
        try:
            return self.paths[self.ids.index(item_id)]
        except ValueError:
            return None


def embed_images(adapter, paths: list[str], batch_size: int = 64, desc: str = "embed") -> torch.Tensor:
    """Image embeddings of files, a batch at a time, with a progress bar."""
    chunks = []
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        for lo in range(0, len(paths), batch_size):
            images = []
            for p in paths[lo:lo + batch_size]:
                with Image.open(p) as img:
                    images.append(img.convert("RGB"))
            chunks.append(adapter.encode_images(images, batch_size))
            bar.update(len(images))
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def _prefix(key: str, digest: str) -> str:
    return join(key, digest)


def build_index(adapter, items: list[tuple[str, str]], store: ObjectStore | str, key: str,
                batch_size: int = 64) -> Index:
    """Embed the gallery with ``adapter`` and store it under the model key (index.json last)."""
    store = store if isinstance(store, ObjectStore) else open_store(store)
    emb = embed_images(adapter, [p for _, p in items], batch_size, desc=f"index {key}")
    prefix = _prefix(key, gallery_digest(items))
    buf = io.BytesIO()
    np.save(buf, emb.numpy().astype(np.float32))
    store.put_bytes(join(prefix, "embeddings.npy"), buf.getvalue())
    meta = {"model": key, "ids": [i for i, _ in items], "paths": [p for _, p in items], "count": len(items),
            "dim": int(emb.shape[1]), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.put_bytes(join(prefix, "index.json"), json.dumps(meta).encode())
    return Index(meta["ids"], meta["paths"], emb, key)


def load_index(store: ObjectStore | str, key: str, items: list[tuple[str, str]]) -> Index | None:
    """The stored index of this model and gallery, or None when it was never built (or is incomplete)."""
    store = store if isinstance(store, ObjectStore) else open_store(store)
    prefix = _prefix(key, gallery_digest(items))
    if not store.exists(join(prefix, "index.json")):
        return None
    meta = json.loads(store.get_bytes(join(prefix, "index.json")))
    emb = torch.from_numpy(np.load(io.BytesIO(store.get_bytes(join(prefix, "embeddings.npy")))))
    return Index(meta["ids"], meta["paths"], emb, key)


def reindex_status(registry, name: str, alias: str, store: ObjectStore | str,
                   items: list[tuple[str, str]]) -> dict:
    """Whether the alias's current version still lacks the gallery embeddings its promotion asked for."""
    store = store if isinstance(store, ObjectStore) else open_store(store)
    version = registry.resolve(name, alias)
    events = [e for e in registry.alias_history(name, alias) if e.get("action") == "promote"]
    asked = any(e.get("reindex_required") and e.get("version") == version for e in events)
    built = store.exists(join(_prefix(model_key(name, version), gallery_digest(items)), "index.json"))
    stale = next((e.get("previous") for e in reversed(events) if e.get("version") == version), None)
    return {"alias": alias, "version": version, "reindex_required": asked, "indexed": built,
            "pending": not built, "stale_version": stale}
