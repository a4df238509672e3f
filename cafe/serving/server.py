"""`cafe serve`: one loaded model version behind KServe's Python model server.

Two KServe models share the adapter: ``<name>`` answers embedding and search requests (a text or an image in,
its embedding and the top-k gallery items out), ``<name>-generate`` answers generation requests. Both speak
KServe's V1 (``POST /v1/models/<name>:predict`` with ``{"instances": [...]}``) and V2 (``/v2/models/<name>/infer``)
protocols; ``POST /v1/feedback`` records which result a user chose. Every answered instance is written to the
traffic log with the model version that answered it (:class:`~cafe.serving.traffic.TrafficLog`).

:class:`Service` holds the logic and is what the drift benchmark drives directly; the KServe classes only
translate the protocols.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from cafe.config import Params
from cafe.serving.index import Index
from cafe.serving.traffic import TrafficLog


class RequestError(ValueError):
    """A request instance that cannot be answered; the message names the instance and the field."""


def decode_image(data: str, where: str) -> tuple[Image.Image, bytes]:
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            return img.convert("RGB"), raw
    except (ValueError, UnidentifiedImageError, OSError) as err:
        raise RequestError(f"{where}: 'image_b64' is not a base64-encoded image ({err})") from None


def encode_image(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _finite_list(vec: torch.Tensor) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in vec.tolist()]


class Service:
    """Embedding search and generation with one model version, logging every answer."""

    def __init__(self, adapter, version: str, traffic: TrafficLog | None, index: Index | None = None,
                 name: str = "cafe", top_k: int = 10, log_embeddings: bool = True, max_new_tokens: int = 32):
        self.adapter, self.version, self.traffic, self.index = adapter, version, traffic, index
        self.name, self.top_k, self.log_embeddings, self.max_new_tokens = name, top_k, log_embeddings, max_new_tokens

    def search(self, instances: list[dict], top_k: int | None = None) -> list[dict]:
        """Each instance ``{"text": ...}`` or ``{"image_b64": ...}`` -> embedding + top-k gallery results."""
        k = top_k or self.top_k
        texts, images, order = [], [], []
        for n, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise RequestError(f"instances[{n}]: expected an object with 'text' or 'image_b64'")
            if isinstance(inst.get("text"), str) and inst["text"].strip():
                order.append(("text", len(texts)))
                texts.append(inst["text"])
            elif "image_b64" in inst:
                img, raw = decode_image(inst["image_b64"], f"instances[{n}]")
                order.append(("image", len(images)))
                images.append((img, raw))
            else:
                raise RequestError(f"instances[{n}]: give a non-empty 'text' or an 'image_b64'")
        text_emb = self.adapter.encode_texts(texts) if texts else None
        image_emb = self.adapter.encode_images([i for i, _ in images]) if images else None
        records, answers = [], []
        for kind, j in order:
            emb = text_emb[j] if kind == "text" else image_emb[j]
            results = self.index.search(emb[None], k)[0] if self.index is not None else []
            rec: dict[str, Any] = {"kind": "search" if kind == "text" else "image",
                                   "results": [{"id": i, "score": s} for i, s in results],
                                   "top1_score": results[0][1] if results else None}
            if kind == "text":
                rec["query"] = texts[j]
            else:
                sha = hashlib.sha256(images[j][1]).hexdigest()
                rec["query"] = {"image_sha256": sha}
                if self.traffic is not None:
                    rec["query"]["image_key"] = self.traffic.log_image(sha, images[j][1])
            answers.append({**rec, "embedding": _finite_list(emb)})
            records.append({**rec, "embedding": _finite_list(emb) if self.log_embeddings else None})
        self._log(records, answers)
        return answers

    def generate(self, instances: list[dict]) -> list[dict]:
        """Each instance ``{"image_b64": ..., "prompt": ...}`` -> generated text."""
        images, prompts = [], []
        for n, inst in enumerate(instances):
            if not isinstance(inst, dict) or "image_b64" not in inst:
                raise RequestError(f"instances[{n}]: generation needs 'image_b64' (and optionally 'prompt')")
            images.append(decode_image(inst["image_b64"], f"instances[{n}]")[0])
            prompts.append(str(inst.get("prompt") or self.adapter.prompts.caption))
        texts = self.adapter.generate(images, prompts, max_new_tokens=self.max_new_tokens)
        answers = [{"kind": "generate", "query": {"prompt": p}, "text": t} for p, t in zip(prompts, texts)]
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
        if self.traffic is None:
            raise RequestError("this server keeps no traffic log; feedback cannot be recorded")
        return self.traffic.log_feedback(request_id, chosen)


# ----------------------------------------------------------------------------- KServe


def kserve_models(service: Service):
    """The two KServe models (search/embedding and generation) over one :class:`Service`."""
    from kserve import Model
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    def v1_instances(payload) -> tuple[list, dict]:
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('expected {"instances": [...]} (KServe V1) or a V2 inference request')
        return payload["instances"], payload.get("parameters") or {}

    def v2_strings(request: InferRequest, name: str) -> list[str]:
        for inp in request.inputs:
            if inp.name == name:
                flat = inp.data if not inp.data or not isinstance(inp.data[0], list) else [x for r in inp.data for x in r]
                return [d.decode() if isinstance(d, bytes) else str(d) for d in flat]
        return []

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

        def predict(self, payload, headers=None, response_headers=None):
            try:
                if isinstance(payload, InferRequest):
                    instances = [{"text": t} for t in v2_strings(payload, "text")]
                    instances += [{"image_b64": b} for b in v2_strings(payload, "image_b64")]
                    answers = service.search(instances)
                    emb = [a["embedding"] for a in answers]
                    outputs = [InferOutput("embedding", [len(emb), len(emb[0]) if emb else 0], "FP32",
                                           [v for row in emb for v in row]),
                               InferOutput("results", [len(answers)], "BYTES",
                                           [json.dumps({"request_id": a.get("request_id"), "results": a["results"]})
                                            for a in answers])]
                    return InferResponse(payload.id or "", self.name, outputs, model_version=service.version)
                instances, parameters = v1_instances(payload)
                return {"predictions": service.search(instances, parameters.get("top_k")),
                        "model_version": service.version}
            except RequestError as err:
                raise InvalidInput(str(err)) from None

    class GenerateModel(Loaded):
        """V1: instances of {"image_b64", "prompt"} -> {"text"}."""

        def predict(self, payload, headers=None, response_headers=None):
            try:
                instances, _ = v1_instances(payload)
                return {"predictions": service.generate(instances), "model_version": service.version}
            except RequestError as err:
                raise InvalidInput(str(err)) from None

    return [SearchModel(service.name), GenerateModel(f"{service.name}-generate")]


def add_feedback_route(app, service: Service) -> None:
    """``POST /v1/feedback`` with ``{"request_id": ..., "chosen": <gallery id>}`` on KServe's FastAPI app."""
    from fastapi import Body, HTTPException

    def feedback(body: dict = Body(...)) -> dict:
        try:
            return {"recorded": service.feedback(body.get("request_id"), body.get("chosen"))}
        except (RequestError, ValueError) as err:
            raise HTTPException(status_code=400, detail=str(err)) from None

    app.add_api_route("/v1/feedback", feedback, methods=["POST"])


def run(service: Service, host: str, port: int) -> None:
    """Serve the models with KServe's REST server (uvicorn) on ``host:port`` until stopped."""
    import asyncio

    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    server = ModelServer(http_port=port, enable_grpc=False, workers=1)
    for model in kserve_models(service):
        server.register_model(model)
    add_feedback_route(app, service)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port)
    rest.config.host = host  # KServe binds 0.0.0.0; tests and workstations want 127.0.0.1
    asyncio.run(rest.start())


def resolve_model(model: str | None, p: Params) -> tuple[str, str]:
    """The model directory to load and its version label: a given directory (its registry record, if pulled
    from the registry, names the version), or ``serve.ref`` pulled from the registry into a local cache."""
    from cafe.registry import RECORD_FILE, Registry

    if model:
        record = Path(model) / RECORD_FILE
        if record.is_file():
            data = json.loads(record.read_text())
            return model, f"{data['name']}-v{data['version']}"
        return model, f"local-{Path(model).resolve().name}"
    reg = Registry(p.registry.store, progress=True)
    version = reg.resolve(p.registry.name, p.serve.ref)
    dest = Path(".cache/cafe/serve") / f"{p.registry.name}-v{version}"
    if not (dest / RECORD_FILE).is_file():
        reg.pull(p.registry.name, version, dest)
    return str(dest), f"{p.registry.name}-v{version}"
