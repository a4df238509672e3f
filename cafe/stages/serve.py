"""Stage `serve`: a registered version (``serve.ref``, production by default) or a model folder behind KServe's
V1/V2 endpoints (``<name>`` for embeddings + gallery search, ``<name>-generate`` for captions) and
``POST /v1/feedback``; every answer goes to the traffic log with the model version."""

from __future__ import annotations

from cafe.config import Params
from cafe.models import load_adapter
from cafe.serving.index import build_index, gallery_items, load_index
from cafe.serving.server import Service, resolve_model, run
from cafe.serving.traffic import TrafficLog


def service(p: Params, model: str | None = None, log=print) -> Service:
    """The loaded service: the model (``model`` or the registry's ``serve.ref``), its gallery index (built now
    when the version has none) and the traffic log."""
    path, version = resolve_model(model, p)
    adapter = load_adapter(path, p.prompts, p.model, fresh_tuning=False)
    index = None
    if p.serve.gallery:
        items = gallery_items(p.serve.gallery)
        index = load_index(p.serve.index_store, version, items)
        if index is None:
            log(f"no gallery index for {version} yet: building it ({len(items)} images)")
            index = build_index(adapter, items, p.serve.index_store, version, p.serve.batch_size)
    return Service(adapter, version, TrafficLog(p.serve.traffic_store), index, name=p.serve.model_name,
                   top_k=p.serve.top_k, log_embeddings=p.serve.log_embeddings, max_new_tokens=p.serve.max_new_tokens)


def serve(p: Params, model: str | None = None, host: str | None = None, port: int | None = None, log=print) -> None:
    """Serve until stopped on ``host:port`` (default ``serve.host`` / ``serve.port``)."""
    svc = service(p, model, log)
    host, port = host or p.serve.host, port or p.serve.port
    log(f"serving {svc.version} as {svc.name} on {host}:{port}; traffic -> {svc.traffic.store.uri}")
    run(svc, host, port)
