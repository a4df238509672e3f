"""OpenAI-compatible routes beside KServe's V1/V2, over the same :class:`~cafe.serving.server.Service`.

- ``POST /v1/embeddings``: ``input`` (a string or an array of strings), or ``messages`` with one user turn
  holding a text or an ``image_url`` data URL (the chat form vLLM's pooling API accepts for multimodal
  embedding models); ``encoding_format`` ``float`` or ``base64`` (little-endian float32, as the ``openai``
  client decodes it). The server adds the embedding instruction of the model's contract itself.
- ``POST /v1/chat/completions``: a user turn with one image (data URL) and a question -> the model's answer;
  greedy unless ``temperature`` > 0; no streaming.
- ``GET /v1/models``: OpenAI's model list (``data``) and KServe V1's (``models``) in one answer, since both
  protocols use this path.

The same routes are also under ``/openai`` (``/openai/v1/...``), where KServe's Hugging Face runtime puts them.
Errors come in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``) with a 4xx status.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from fastapi import Request

from cafe.serving.requests import RequestError, json_body, openai_chat, openai_embedding_queries


PREFIXES = ("", "/openai")
_CODES = {404: "model_not_found", 413: "request_too_large"}


def _error(err: RequestError):
    from fastapi.responses import JSONResponse

    kind = "invalid_request_error" if err.status != 404 else "not_found_error"
    return JSONResponse(status_code=err.status, content={"error": {
        "message": str(err), "type": kind, "param": err.param, "code": _CODES.get(err.status)}})


def _encode(vector: list[float | None], fmt: str) -> list[float | None] | str:
    if fmt == "float":
        return vector
    values = np.asarray([np.nan if v is None else v for v in vector], dtype="<f4")
    return base64.b64encode(values.tobytes()).decode()


def _tokens(service, texts: list[str]) -> int:
    tokenizer = service.adapter.tokenizer
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def add_openai_routes(app, service) -> None:
    """Register the OpenAI-compatible routes on KServe's FastAPI app (before KServe's own, so that
    ``GET /v1/models`` answers both protocols)."""
    from starlette.concurrency import run_in_threadpool

    created = int(time.time())

    async def embeddings(request: Request):
        try:
            body = json_body(await request.body())
            model, queries, fmt = openai_embedding_queries(body, service.limits, service.names)
        except RequestError as err:
            return _error(err)
        answers = await run_in_threadpool(service.search_queries, queries, service.top_k, "openai")
        used = _tokens(service, [q.text for q in queries if q.text is not None])
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": _encode(a["embedding"], fmt)}
                         for i, a in enumerate(answers)],
                "usage": {"prompt_tokens": used, "total_tokens": used},
                "request_ids": [a.get("request_id") for a in answers], "model_version": service.version}

    async def chat(request: Request):
        try:
            body = json_body(await request.body())
            req = openai_chat(body, service.limits, service.names, service.adapter.prompts.caption,
                              service.max_new_tokens)
        except RequestError as err:
            return _error(err)
        (answer,) = await run_in_threadpool(service.generate_pairs, [(req.image, req.prompt)], req.max_new_tokens,
                                            req.temperature, req.top_p, "openai")
        prompt_tokens, completion = _tokens(service, [req.prompt]), _tokens(service, [answer["text"]])
        return {"id": f"chatcmpl-{answer.get('request_id') or created}", "object": "chat.completion",
                "created": int(time.time()), "model": req.model, "system_fingerprint": service.version,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer["text"]},
                             "finish_reason": "length" if completion >= req.max_new_tokens else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}

    async def models() -> dict[str, Any]:
        return {"object": "list", "models": service.names,
                "data": [{"id": name, "object": "model", "created": created, "owned_by": "cafe"}
                         for name in service.names]}

    for prefix in PREFIXES:
        app.add_api_route(f"{prefix}/v1/embeddings", embeddings, methods=["POST"])
        app.add_api_route(f"{prefix}/v1/chat/completions", chat, methods=["POST"])
        app.add_api_route(f"{prefix}/v1/models", models, methods=["GET"])
