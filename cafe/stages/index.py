"""Stage `index`: the gallery embeddings of the served version (after a promotion marked them stale)."""

from __future__ import annotations

from cafe.config import Params
from cafe.models import load_adapter
from cafe.registry import Registry
from cafe.serving.index import build_index, gallery_items, reindex_status
from cafe.serving.server import resolve_model


def index(p: Params, model: str | None = None) -> dict:
    """(Re)compute the gallery index of ``model`` (default: the registry's ``serve.ref``) into ``serve.index_store``;
    returns the version, the number of images and (for a registry version) its reindex status."""
    path, version = resolve_model(model, p)
    adapter = load_adapter(path, p.prompts, p.model, fresh_tuning=False)
    items = gallery_items(p.serve.gallery)
    built = build_index(adapter, items, p.serve.index_store, version, p.serve.batch_size)
    status = None if model else reindex_status(Registry(p.registry.store), p.registry.name, p.serve.ref,
                                               p.serve.index_store, items)
    return {"version": version, "images": len(built.ids), "status": status}
