"""Stage `serve`: a registered version (``serve.ref``, production by default) or a model folder behind KServe's
V1/V2 endpoints (``<name>`` for embeddings + gallery search, ``<name>-generate`` for captions), ``POST
/v1/feedback`` and the OpenAI-compatible ``/v1/embeddings``, ``/v1/chat/completions`` and ``/v1/models``; every
answer goes to the traffic log with the model version."""

from __future__ import annotations

from cafe.config import Params
from cafe.serving.server import Service, open_service, run


def service(p: Params, model: str | None = None, log=print) -> Service:
    """The loaded service: the model (``model`` or the registry's ``serve.ref``), its embedding contract checked,
    its gallery index (keyed by the weights; built now when missing) and the traffic log."""
    return open_service(p, model, log)


def serve(p: Params, svc: Service | str | None = None, host: str | None = None, port: int | None = None,
          log=print) -> None:
    """Serve ``svc`` (a loaded :func:`service`, or the model for one) until stopped on ``host:port`` (default
    ``serve.host`` / ``serve.port``)."""
    svc = svc if isinstance(svc, Service) else service(p, svc, log)
    host, port = host or p.serve.host, port or p.serve.port
    log(f"serving {svc.version} as {svc.name} on {host}:{port}; traffic -> {svc.traffic.store.uri}")
    run(svc, host, port)
