"""`cafe serve`: one loaded model version behind KServe's Python model server, with an OpenAI-compatible API.

Two KServe models share the adapter: ``<name>`` answers embedding and search requests (a text or an image in,
its embedding and the top-k gallery items out), ``<name>-generate`` answers generation requests. Both speak
KServe's V1 (``POST /v1/models/<name>:predict`` with ``{"instances": [...]}``) and V2 (``/v2/models/<name>/infer``)
protocols; ``POST /v1/feedback`` records which result a user chose. The same process and model version answer
``POST /v1/embeddings``, ``POST /v1/chat/completions`` and ``GET /v1/models`` as OpenAI's and vLLM's clients
expect (:mod:`cafe.serving.openai_api`). Every request is checked by :mod:`cafe.serving.requests` (4xx naming
the field, never a 5xx for a bad request), and every answered instance is written to the traffic log with the
model version that answered it (:class:`~cafe.serving.traffic.TrafficLog`).

:class:`Service` holds the logic and is what the drift benchmark drives directly; the KServe classes and the
OpenAI routes only translate the protocols. :func:`open_service` loads a model, checks its embedding contract
against the prompts it is served with and against its gallery index (keyed by a digest of the weights).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from cafe.config import Params
from cafe.serving.index import Index
from cafe.serving.requests import (Limits, Query, RequestError, feedback_body, generate_instances, max_new_tokens,
                                   search_instances, top_k as top_k_param, v1_body, v2_metadata, v2_search_inputs)
from cafe.serving.traffic import TrafficLog, UnknownRequest


def _finite_list(vec: torch.Tensor) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in vec.tolist()]


class Service:
    """Embedding search and generation with one model version, logging every answer."""

    def __init__(self, adapter, version: str, traffic: TrafficLog | None, index: Index | None = None,
                 name: str = "cafe", top_k: int = 10, log_embeddings: bool = True, max_new_tokens: int = 32,
                 limits: Limits | None = None):
        self.adapter, self.version, self.traffic, self.index = adapter, version, traffic, index
        self.name, self.top_k, self.log_embeddings, self.max_new_tokens = name, top_k, log_embeddings, max_new_tokens
        self.limits = limits or Limits()
        self._model_lock = threading.Lock()  # KServe's routes and the OpenAI routes (a thread pool) share the model

    @property
    def names(self) -> list[str]:
        """The model names this service answers to (search first)."""
        return [self.name, f"{self.name}-generate"]

    @property
    def dim(self) -> int:
        config = self.adapter.model.config
        return int(getattr(config, "text_config", config).hidden_size)

    def search(self, instances: list[dict], top_k: int | None = None, api: str = "v1") -> list[dict]:
        """Each instance ``{"text": ...}`` or ``{"image_b64": ...}`` -> embedding + top-k gallery results."""
        queries = search_instances(instances, self.limits)
        return self.search_queries(queries, top_k or self.top_k, api)

    def search_queries(self, queries: list[Query], k: int, api: str = "v1") -> list[dict]:
        texts = [q.text for q in queries if q.text is not None]
        images = [q.image for q in queries if q.text is None]
        with self._model_lock:
            text_emb = self.adapter.encode_texts(texts) if texts else None
            image_emb = self.adapter.encode_images(images) if images else None
        records, answers, t, i = [], [], 0, 0
        for q in queries:
            if q.text is not None:
                emb, t = text_emb[t], t + 1
            else:
                emb, i = image_emb[i], i + 1
            results = self.index.search(emb[None], k)[0] if self.index is not None else []
            rec: dict[str, Any] = {"kind": "search" if q.text is not None else "image", "api": api,
                                   "results": [{"id": r, "score": s} for r, s in results],
                                   "top1_score": results[0][1] if results else None}
            if q.text is not None:
                rec["query"] = q.text
            else:
                sha = hashlib.sha256(q.raw).hexdigest()
                rec["query"] = {"image_sha256": sha}
                if self.traffic is not None:
                    rec["query"]["image_key"] = self.traffic.log_image(sha, q.raw)
            answers.append({**rec, "embedding": _finite_list(emb)})
            records.append({**rec, "embedding": _finite_list(emb) if self.log_embeddings else None})
        self._log(records, answers)
        return answers

    def generate(self, instances: list[dict], max_tokens: int | None = None) -> list[dict]:
        """Each instance ``{"image_b64": ..., "prompt": ...}`` -> generated text."""
        pairs = generate_instances(instances, self.limits, self.adapter.prompts.caption)
        return self.generate_pairs(pairs, max_tokens or self.max_new_tokens)

    def generate_pairs(self, pairs: list[tuple[Image.Image, str]], max_tokens: int, temperature: float = 0.0,
                       top_p: float = 1.0, api: str = "v1") -> list[dict]:
        images, prompts = [img for img, _ in pairs], [p for _, p in pairs]
        with self._model_lock:
            texts = self.adapter.generate(images, prompts, max_new_tokens=max_tokens, do_sample=temperature > 0,
                                          temperature=temperature or 1.0, top_p=top_p)
        answers = [{"kind": "generate", "api": api, "query": {"prompt": p}, "text": t} for p, t in zip(prompts, texts)]
        self._log([dict(a) for a in answers], answers)
        return answers

    def _log(self, records: list[dict], answers: list[dict]) -> None:
        if self.traffic is None:
            for a in answers:
                a["model_version"] = self.version
            return
        logged = self.traffic.log_request(records, self.name, self.version)
        for answer, rec in zip(answers, logged):
            answer["request_id"], answer["model_version"] = rec["request_id"], self.version

    def feedback(self, request_id: str, chosen: str) -> dict:
        """Record the result a user chose; 404 for a request id the log never answered (nothing is stored)."""
        if self.traffic is None:
            raise RequestError("this server keeps no traffic log; feedback cannot be recorded", status=409)
        request_id, chosen = feedback_body({"request_id": request_id, "chosen": chosen}, self.limits)
        if self.index is not None and chosen not in self.index.ids:
            raise RequestError(f"chosen: {chosen!r} is not an id of the served gallery", param="chosen")
        try:
            return self.traffic.log_feedback(request_id, chosen)
        except UnknownRequest as err:
            raise RequestError(str(err), status=404, param="request_id") from None


# ----------------------------------------------------------------------------- KServe


def kserve_models(service: Service):
    """The two KServe models (search/embedding and generation) over one :class:`Service`."""
    from kserve import Model
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    limits = service.limits

    class Loaded(Model):
        """A KServe model over the already loaded service: ready as soon as it exists."""

        def __init__(self, name: str):
            super().__init__(name)
            self.load()

        def load(self) -> bool:
            self.ready = True
            return self.ready

    class SearchModel(Loaded):
        """V1: instances of {"text"} or {"image_b64"}; V2: a BYTES input "text" or "image_b64" -> FP32
        "embedding" (and BYTES "results" as JSON)."""

        def get_input_types(self) -> list[dict]:
            return v2_metadata(service.dim)[0]

        def get_output_types(self) -> list[dict]:
            return v2_metadata(service.dim)[1]

        def predict(self, payload, headers=None, response_headers=None):
            if isinstance(payload, InferRequest):
                k = top_k_param(payload.parameters or {}, limits, service.top_k)
                answers = service.search_queries(v2_search_inputs(payload, limits), k)
                emb = [a["embedding"] for a in answers]
                outputs = [InferOutput("embedding", [len(emb), service.dim], "FP32", [v for row in emb for v in row]),
                           InferOutput("results", [len(answers)], "BYTES",
                                       [json.dumps({"request_id": a.get("request_id"), "results": a["results"]})
                                        for a in answers])]
                return InferResponse(payload.id or "", self.name, outputs, model_version=service.version)
            instances, parameters = v1_body(payload, limits)
            queries = search_instances(instances, limits)
            return {"predictions": service.search_queries(queries, top_k_param(parameters, limits, service.top_k)),
                    "model_version": service.version}

    class GenerateModel(Loaded):
        """V1: instances of {"image_b64", "prompt"} -> {"text"}."""

        def predict(self, payload, headers=None, response_headers=None):
            if isinstance(payload, InferRequest):
                raise RequestError(f"{self.name} speaks KServe V1 only: POST /v1/models/{self.name}:predict",
                                   param="inputs")
            instances, parameters = v1_body(payload, limits)
            pairs = generate_instances(instances, limits, service.adapter.prompts.caption)
            return {"predictions": service.generate_pairs(pairs, max_new_tokens(parameters, limits,
                                                                                 service.max_new_tokens)),
                    "model_version": service.version}

    return [SearchModel(service.name), GenerateModel(f"{service.name}-generate")]


def run(service: Service, host: str, port: int) -> None:
    """Serve the models with KServe's REST server (uvicorn) on ``host:port`` until stopped."""
    import asyncio

    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    from cafe.serving.routes import add_routes

    server = ModelServer(http_port=port, enable_grpc=False, workers=1)
    for model in kserve_models(service):
        server.register_model(model)
    add_routes(app, service)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port)
    rest.config.host = host  # KServe binds 0.0.0.0; tests and workstations want 127.0.0.1
    asyncio.run(rest.start())


def resolve_model(model: str | None, p: Params) -> tuple[str, str]:
    """The model directory to load and its version label: a given directory (its registry record, if pulled
    from the registry, names the version), or ``serve.ref`` pulled from the registry into a local cache."""
    from cafe.registry import RECORD_FILE, Registry
    from cafe.serving.index import pulled_record

    if model:
        data = pulled_record(model)  # None too when the folder was changed after the pull (retrained in place)
        if data is not None:
            return model, f"{data['name']}-v{data['version']}"
        return model, f"local-{Path(model).resolve().name}"
    reg = Registry(p.registry.store, progress=True)
    version = reg.resolve(p.registry.name, p.serve.ref)
    dest = Path(".cache/cafe/serve") / f"{p.registry.name}-v{version}"
    if not (dest / RECORD_FILE).is_file():
        reg.pull(p.registry.name, version, dest)
    return str(dest), f"{p.registry.name}-v{version}"


def open_service(p: Params, model: str | None = None, log: Callable[[str], None] = print) -> Service:
    """The service of ``model`` (a folder, or the registry's ``serve.ref``): the adapter, its embedding contract
    checked against the prompts it is served with, its gallery index (keyed by the weights digest; built now when
    missing, refused when made under another contract), the traffic log and the request limits."""
    from cafe.contract import check_contract, contract_of, read_contract
    from cafe.models import load_adapter
    from cafe.serving.index import build_index, gallery_items, index_key, load_index, weights_digest

    path, version = resolve_model(model, p)
    # no image cache: a server sees each user's image about once, and keeps none of them in memory
    adapter = load_adapter(path, p.prompts, p.model.model_copy(update={"image_cache_mb": 0}), fresh_tuning=False)
    live = contract_of(adapter)
    saved = read_contract(path)
    if saved is not None:
        check_contract(saved, live, f"model {path} served with params.yaml's prompts",
                       "serve it with the prompts it was trained with (prompts.* in params.yaml)")
    index = None
    if p.serve.gallery:
        items = gallery_items(p.serve.gallery)
        key = index_key(weights_digest(path))
        index = load_index(p.serve.index_store, key, items, contract=live)
        if index is None:
            log(f"no gallery index for {version} ({key}) yet: building it ({len(items)} images)")
            index = build_index(adapter, items, p.serve.index_store, key, p.serve.batch_size, label=version,
                                contract=live)
    return Service(adapter, version, TrafficLog(p.serve.traffic_store), index, name=p.serve.model_name,
                   top_k=p.serve.top_k, log_embeddings=p.serve.log_embeddings, max_new_tokens=p.serve.max_new_tokens,
                   limits=Limits.from_params(p))
