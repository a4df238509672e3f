"""Gallery index: the stored image embeddings a served model searches, one set per model weights.

Embeddings of one model are meaningless to another, so the index is keyed by a digest of the served weights
(and the processing configs that shape an embedding: :func:`weights_digest`), not by a folder name or a version
label (a model retrained in the same folder gets a new index), and by the gallery's content. The index also
records the embedding contract it was made under; loading it for a model with another contract is refused.
Promoting a new version to production records in the alias history that its gallery embeddings must be
recomputed (``reindex_required``); ``cafe index`` recomputes them and :func:`reindex_status` says whether that is
still pending. Layout under the index store::

    w-<weights digest>/<gallery digest>/embeddings.npy   float32 [N, D], L2-normalised
    w-<weights digest>/<gallery digest>/index.json       ids, image paths, model label, contract; written last
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

from cafe.contract import check_contract
from cafe.registry import RECORD_FILE, sha256_file
from cafe.storage import ObjectStore, join, open_store

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# the files of a model folder that decide its embeddings (weights, and how inputs become tokens and pixels)
EMBEDDING_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer.json",
                   "tokenizer_config.json", "chat_template.jinja", "adapter_config.json", "cafe_tuning.json")


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


def _decides_embeddings(rel: str) -> bool:
    return rel.endswith(".safetensors") or rel in EMBEDDING_FILES


def files_digest(files: dict[str, str]) -> str:
    """Digest of ``{relative path: sha256}`` over the files that decide embeddings."""
    chosen = sorted((rel, sha) for rel, sha in files.items() if _decides_embeddings(rel))
    if not any(rel.endswith(".safetensors") for rel, _ in chosen):
        raise FileNotFoundError("no .safetensors weights among the model's files")
    return hashlib.sha256(json.dumps(chosen).encode()).hexdigest()[:16]


def pulled_record(model_dir: str | Path) -> dict | None:
    """The registry record a pull wrote beside a model, while it still describes the folder: the files that
    decide embeddings are the ones it lists, with their sizes, none written after it. A model retrained or
    edited in a pulled folder has no current record (its old sha256s would key the old gallery index)."""
    model_dir = Path(model_dir)
    path = model_dir / RECORD_FILE
    try:
        record = json.loads(path.read_text())
        listed = {rel: meta for rel, meta in record["files"].items() if _decides_embeddings(rel)}
        stamp = path.stat().st_mtime
        on_disk = {p.relative_to(model_dir).as_posix(): p.stat() for p in model_dir.rglob("*")
                   if p.is_file() and _decides_embeddings(p.relative_to(model_dir).as_posix())}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if set(on_disk) != set(listed) or any(st.st_size != listed[rel].get("size") or st.st_mtime > stamp
                                          for rel, st in on_disk.items()):
        return None
    return record


def weights_digest(model_dir: str | Path) -> str:
    """Digest of the served weights: from the sha256s a registry pull verified (while its record is current:
    :func:`pulled_record`), else by hashing the files; a LoRA folder includes its base model's digest."""
    model_dir = Path(model_dir)
    record = pulled_record(model_dir)
    if record is not None:
        files = {rel: meta["sha256"] for rel, meta in record["files"].items()}
    else:
        files = {p.relative_to(model_dir).as_posix(): sha256_file(p) for p in sorted(model_dir.rglob("*"))
                 if p.is_file() and _decides_embeddings(p.relative_to(model_dir).as_posix())}
    own = files_digest(files)
    tuning = model_dir / "cafe_tuning.json"
    base = json.loads(tuning.read_text()).get("base_model") if tuning.is_file() else None
    if base and Path(base).is_dir():
        return hashlib.sha256(f"{own}+{weights_digest(base)}".encode()).hexdigest()[:16]
    return own


def index_key(digest: str) -> str:
    return f"w-{digest}"


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
                batch_size: int = 64, label: str | None = None, contract: dict | None = None) -> Index:
    """Embed the gallery with ``adapter`` and store it under the model key (index.json last), with the model's
    label (its version) and the embedding contract it was made under."""
    store = store if isinstance(store, ObjectStore) else open_store(store)
    emb = embed_images(adapter, [p for _, p in items], batch_size, desc=f"index {key}")
    prefix = _prefix(key, gallery_digest(items))
    buf = io.BytesIO()
    np.save(buf, emb.numpy().astype(np.float32))
    store.put_bytes(join(prefix, "embeddings.npy"), buf.getvalue())
    meta = {"model": label or key, "key": key, "ids": [i for i, _ in items], "paths": [p for _, p in items],
            "count": len(items), "dim": int(emb.shape[1]), "contract": contract,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.put_bytes(join(prefix, "index.json"), json.dumps(meta).encode())
    return Index(meta["ids"], meta["paths"], emb, key)


def load_index(store: ObjectStore | str, key: str, items: list[tuple[str, str]],
               contract: dict | None = None) -> Index | None:
    """The stored index of this model and gallery, or None when it was never built (or is incomplete).
    Raises :class:`~cafe.contract.ContractMismatch` when it was made under another embedding contract."""
    store = store if isinstance(store, ObjectStore) else open_store(store)
    prefix = _prefix(key, gallery_digest(items))
    if not store.exists(join(prefix, "index.json")):
        return None
    meta = json.loads(store.get_bytes(join(prefix, "index.json")))
    if contract is not None:
        check_contract(meta.get("contract") or {}, contract, f"gallery index {store.uri}/{prefix}",
                       "serve with the prompts the index was built with, or rebuild it with `cafe index`")
    emb = torch.from_numpy(np.load(io.BytesIO(store.get_bytes(join(prefix, "embeddings.npy")))))
    return Index(meta["ids"], meta["paths"], emb, key)


def reindex_status(registry, name: str, alias: str, store: ObjectStore | str,
                   items: list[tuple[str, str]]) -> dict:
    """Whether the alias's current version still lacks the gallery embeddings its promotion asked for."""
    store = store if isinstance(store, ObjectStore) else open_store(store)
    version = registry.resolve(name, alias)
    events = [e for e in registry.alias_history(name, alias) if e.get("action") == "promote"]
    asked = any(e.get("reindex_required") and e.get("version") == version for e in events)
    files = {rel: meta["sha256"] for rel, meta in registry.show(name, version)["files"].items()}
    built = store.exists(join(_prefix(index_key(files_digest(files)), gallery_digest(items)), "index.json"))
    stale = next((e.get("previous") for e in reversed(events) if e.get("version") == version), None)
    return {"alias": alias, "version": version, "reindex_required": asked, "indexed": built,
            "pending": not built, "stale_version": stale}
