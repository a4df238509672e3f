"""Request validation for every route of the server (KServe V1 and V2, feedback, the OpenAI-compatible API).

Each parser takes the decoded JSON body (or KServe's V2 request) and returns typed queries, or raises a
:class:`RequestError` with the HTTP status to answer (400 bad field, 404 unknown model or request id, 413 too
large) and a message naming the field (``instances[2].image_b64``, ``inputs[0].datatype``,
``messages[0].content[1].image_url.url``). Types and ranges are checked before any work; images are checked
against the data stage's image policy (:func:`cafe.data.images.clean_image`: size and pixel count read from
the header before a pixel is decoded). :class:`BodyLimit` refuses bodies over ``serve.max_body_bytes`` before
they are read.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from cafe.config import ImageRulesConfig, Params
from cafe.data.captions import find_marker
from cafe.data.images import ImageRejected, clean_image

TEXT_INPUT, IMAGE_INPUT = "text", "image_b64"
V2_INPUTS = (TEXT_INPUT, IMAGE_INPUT)


class RequestError(ValueError):
    """A request that cannot be answered; ``status`` is the HTTP status, the message names the field."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``serve.*``) and the image policy (``repurpose.images``)."""

    max_body_bytes: int = 32 * 2**20
    max_instances: int = 64
    max_text_chars: int = 4000
    max_top_k: int = 100
    max_new_tokens: int = 256
    images: ImageRulesConfig = field(default_factory=ImageRulesConfig)

    @classmethod
    def from_params(cls, p: Params) -> "Limits":
        s = p.serve
        return cls(s.max_body_bytes, s.max_instances, s.max_text_chars, s.max_top_k, s.max_new_tokens_limit,
                   p.repurpose.images)


@dataclass(frozen=True)
class Query:
    """One embedding / search instance: a text or a checked, decoded image (with its bytes as sent)."""

    text: str | None = None
    image: Image.Image | None = None
    raw: bytes | None = None

    @property
    def kind(self) -> str:
        return "text" if self.text is not None else "image"


# ----------------------------------------------------------------------------- fields
def text_field(value: Any, where: str, limits: Limits, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{where}: expected a string, got {_type(value)}", param=where)
    if not value.strip():
        raise RequestError(f"{where}: empty text", param=where)
    if len(value) > limits.max_text_chars:
        raise RequestError(f"{where}: {len(value)} characters exceeds serve.max_text_chars = "
                           f"{limits.max_text_chars}", param=where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{where}: not valid Unicode (a lone surrogate)", param=where) from None
    if "\x00" in value:
        raise RequestError(f"{where}: contains a NUL character", param=where)
    marker = find_marker(value)
    if marker is not None:  # read as structure by the processor (an <image> without an image raised: a 500)
        raise RequestError(f"{where}: contains the chat-template marker {marker!r} (an image placeholder or turn "
                           "marker of a model family); send plain text", param=where)
    return value


def int_field(value: Any, where: str, low: int, high: int, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(f"{where}: expected an integer in [{low}, {high}], got {_type(value)}", param=where)
    if not low <= value <= high:
        raise RequestError(f"{where}: {value} is outside [{low}, {high}]", param=where)
    return value


def float_field(value: Any, where: str, low: float, high: float, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{where}: expected a number in [{low}, {high}], got {_type(value)}", param=where)
    if not low <= value <= high:
        raise RequestError(f"{where}: {value} is outside [{low}, {high}]", param=where)
    return float(value)


def image_b64(value: Any, where: str, limits: Limits) -> tuple[Image.Image, bytes]:
    """A base64 image checked against the image policy before decoding (size in bytes, then the header)."""
    if not isinstance(value, str):
        raise RequestError(f"{where}: expected a base64 string, got {_type(value)}", param=where)
    rules = limits.images
    if len(value) > 4 * (rules.max_file_bytes // 3 + 1) + 4:
        raise RequestError(f"{where}: the image exceeds images.max_file_bytes = {rules.max_file_bytes}",
                           status=413, param=where)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not base64 (standard alphabet, padded)", param=where) from None
    try:
        clean = clean_image(rules, data=raw)
    except ImageRejected as err:
        status = 413 if err.reason in ("image_too_large", "image_bomb") else 400
        raise RequestError(f"{where}: image refused ({err.reason}): {err}", status=status, param=where) from None
    return clean.image, raw


def data_url_image(value: Any, where: str, limits: Limits) -> tuple[Image.Image, bytes]:
    """``data:image/...;base64,...`` (the OpenAI / vLLM image_url form). Other URLs are not fetched."""
    if not isinstance(value, str):
        raise RequestError(f"{where}: expected a data URL string, got {_type(value)}", param=where)
    head, sep, data = value.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise RequestError(f"{where}: only data:image/...;base64,... URLs are accepted (the server fetches "
                           "nothing from the network)", param=where)
    return image_b64(data, where, limits)


def _type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _instances(instances: Any, where: str, limits: Limits) -> list:
    if not isinstance(instances, list):
        raise RequestError(f"{where}: expected an array, got {_type(instances)}", param=where)
    if not instances:
        raise RequestError(f"{where}: empty", param=where)
    if len(instances) > limits.max_instances:
        raise RequestError(f"{where}: {len(instances)} instances exceeds serve.max_instances = "
                           f"{limits.max_instances}", status=413, param=where)
    return instances


# ----------------------------------------------------------------------------- KServe V1
def v1_body(payload: Any, limits: Limits) -> tuple[list, dict]:
    """``{"instances": [...], "parameters": {...}}`` -> instances, parameters."""
    if not isinstance(payload, dict):
        raise RequestError('expected {"instances": [...]} (KServe V1) or a V2 inference request')
    unknown = sorted(set(payload) - {"instances", "parameters"})
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown field; a V1 request has 'instances' and 'parameters'",
                           param=unknown[0])
    parameters = payload.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise RequestError(f"parameters: expected an object, got {_type(parameters)}", param="parameters")
    return _instances(payload.get("instances"), "instances", limits), parameters


def search_instances(instances: list, limits: Limits, where: str = "instances") -> list[Query]:
    """Each instance ``{"text": ...}`` or ``{"image_b64": ...}`` (exactly one of them)."""
    queries = []
    for n, inst in enumerate(instances):
        at = f"{where}[{n}]"
        if not isinstance(inst, dict):
            raise RequestError(f"{at}: expected an object with 'text' or 'image_b64', got {_type(inst)}", param=at)
        unknown = sorted(set(inst) - {TEXT_INPUT, IMAGE_INPUT})
        if unknown:
            raise RequestError(f"{at}.{unknown[0]}: unknown field; give 'text' or 'image_b64'", param=f"{at}.{unknown[0]}")
        if (TEXT_INPUT in inst) == (IMAGE_INPUT in inst):
            raise RequestError(f"{at}: give exactly one of 'text' and 'image_b64'", param=at)
        if TEXT_INPUT in inst:
            queries.append(Query(text=text_field(inst[TEXT_INPUT], f"{at}.text", limits)))
        else:
            img, raw = image_b64(inst[IMAGE_INPUT], f"{at}.image_b64", limits)
            queries.append(Query(image=img, raw=raw))
    return queries


def top_k(parameters: dict, limits: Limits, default: int) -> int:
    return int_field(parameters.get("top_k"), "parameters.top_k", 1, limits.max_top_k, default)


def generate_instances(instances: list, limits: Limits, default_prompt: str) -> list[tuple[Image.Image, str]]:
    """Each instance ``{"image_b64": ..., "prompt": ...}`` (prompt optional)."""
    out = []
    for n, inst in enumerate(instances):
        at = f"instances[{n}]"
        if not isinstance(inst, dict) or IMAGE_INPUT not in inst:
            raise RequestError(f"{at}: generation needs an object with 'image_b64' (and optionally 'prompt')", param=at)
        unknown = sorted(set(inst) - {IMAGE_INPUT, "prompt"})
        if unknown:
            raise RequestError(f"{at}.{unknown[0]}: unknown field; give 'image_b64' and 'prompt'", param=f"{at}.{unknown[0]}")
        img, _ = image_b64(inst[IMAGE_INPUT], f"{at}.image_b64", limits)
        out.append((img, text_field(inst.get("prompt"), f"{at}.prompt", limits, required=False) or default_prompt))
    return out


def max_new_tokens(parameters: dict, limits: Limits, default: int) -> int:
    return int_field(parameters.get("max_new_tokens"), "parameters.max_new_tokens", 1, limits.max_new_tokens, default)


# ----------------------------------------------------------------------------- KServe V2
def v2_search_inputs(request, limits: Limits) -> list[Query]:
    """A V2 request's BYTES inputs named "text" and/or "image_b64" (shape [N] or [N, 1]) -> queries."""
    if not request.inputs:
        raise RequestError("inputs: empty; give a BYTES input named 'text' or 'image_b64'", param="inputs")
    instances: list[dict] = []
    seen = set()
    for j, inp in enumerate(request.inputs):
        at = f"inputs[{j}]"
        if inp.name not in V2_INPUTS:
            raise RequestError(f"{at}.name: {inp.name!r} is not an input of this model; use 'text' or 'image_b64'",
                               param=f"{at}.name")
        if inp.name in seen:
            raise RequestError(f"{at}.name: input {inp.name!r} given twice", param=f"{at}.name")
        seen.add(inp.name)
        if inp.datatype != "BYTES":
            raise RequestError(f"{at}.datatype: {inp.datatype!r}; '{inp.name}' is BYTES (UTF-8 strings)",
                               param=f"{at}.datatype")
        data = inp.data
        if not isinstance(data, list):
            raise RequestError(f"{at}.data: expected a JSON array of strings", param=f"{at}.data")
        flat = [x for row in data for x in row] if data and all(isinstance(r, list) for r in data) else data
        shape = list(inp.shape or [])
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape) \
                or math.prod(shape) != len(flat) or (len(shape) == 2 and shape[1] != 1) or len(shape) > 2:
            raise RequestError(f"{at}.shape: {shape} does not match {len(flat)} data elements "
                               "(use [N] or [N, 1])", param=f"{at}.shape")
        for i, item in enumerate(flat):
            if isinstance(item, bytes):
                try:
                    item = item.decode("utf-8")
                except UnicodeDecodeError:
                    raise RequestError(f"{at}.data[{i}]: not UTF-8", param=f"{at}.data[{i}]") from None
            if not isinstance(item, str):
                raise RequestError(f"{at}.data[{i}]: expected a string, got {_type(item)}", param=f"{at}.data[{i}]")
            instances.append({inp.name: item, "_where": f"{at}.data[{i}]"})
    _instances(instances, "inputs", limits)
    queries = []
    for inst in instances:
        where = inst.pop("_where")
        if TEXT_INPUT in inst:
            queries.append(Query(text=text_field(inst[TEXT_INPUT], where, limits)))
        else:
            img, raw = image_b64(inst[IMAGE_INPUT], where, limits)
            queries.append(Query(image=img, raw=raw))
    return queries


def v2_metadata(dim: int) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of the search model, as V2 model metadata lists them."""
    inputs = [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]},
              {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]
    outputs = [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]},
               {"name": "results", "datatype": "BYTES", "shape": [-1]}]
    return inputs, outputs


# ----------------------------------------------------------------------------- feedback
def feedback_body(body: Any, limits: Limits) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise RequestError('expected {"request_id": ..., "chosen": <result id>}')
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > 200:
        raise RequestError("request_id: give the request_id of a search answer (a string)", param="request_id")
    chosen = text_field(body.get("chosen"), "chosen", limits)
    return request_id, chosen


# ----------------------------------------------------------------------------- OpenAI-compatible
def openai_model(body: dict, served: list[str]) -> str:
    model = body.get("model")
    if model is None:
        return served[0]
    if not isinstance(model, str) or model not in served:
        raise RequestError(f"model: {model!r} is not served here; GET /v1/models lists {served}", status=404,
                           param="model")
    return model


def _user_content(messages: Any, limits: Limits, need_image: bool) -> tuple[list[str], list[tuple[Image.Image, bytes]]]:
    """The texts and images of the chat messages' user turns (system turns are the model's own)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty array of chat messages", param="messages")
    if len(messages) > limits.max_instances:
        raise RequestError(f"messages: {len(messages)} messages exceeds serve.max_instances", status=413,
                           param="messages")
    texts, images = [], []
    for m, msg in enumerate(messages):
        at = f"messages[{m}]"
        if not isinstance(msg, dict):
            raise RequestError(f"{at}: expected an object with 'role' and 'content'", param=at)
        role = msg.get("role")
        if role not in ("system", "user"):
            raise RequestError(f"{at}.role: {role!r}; one user turn (and optionally a system turn) is answered",
                               param=f"{at}.role")
        content = msg.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list) or not parts:
            raise RequestError(f"{at}.content: expected a string or an array of content parts", param=f"{at}.content")
        for c, part in enumerate(parts):
            where = f"{at}.content[{c}]"
            if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                raise RequestError(f"{where}: expected a part of type 'text' or 'image_url'", param=where)
            if role == "system":
                if part["type"] != "text":
                    raise RequestError(f"{where}: a system turn holds text only", param=where)
                text_field(part.get("text"), f"{where}.text", limits)  # checked; the model's own system prompt is used
            elif part["type"] == "text":
                texts.append(text_field(part.get("text"), f"{where}.text", limits))
            else:
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                images.append(data_url_image(url, f"{where}.image_url.url", limits))
    if len(images) > 1:
        raise RequestError("messages: one image per request; this model embeds or answers about a single image",
                           param="messages")
    if need_image and not images:
        raise RequestError("messages: give an image_url part (data:image/...;base64,...) to ask about",
                           param="messages")
    return texts, images


def openai_embedding_queries(body: Any, limits: Limits, served: list[str]) -> tuple[str, list[Query], str]:
    """``/v1/embeddings``: ``input`` (a string or an array of strings) or ``messages`` (one user turn with a
    text or an image_url, vLLM's pooling form) -> model, queries, encoding format ("float" or "base64")."""
    if not isinstance(body, dict):
        raise RequestError("expected a JSON object (an OpenAI embeddings request)")
    model = openai_model(body, served)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise RequestError(f"encoding_format: {fmt!r}; use 'float' or 'base64'", param="encoding_format")
    if body.get("dimensions") is not None:
        raise RequestError("dimensions: this model's embeddings have one size (see the embedding contract); "
                           "leave 'dimensions' out", param="dimensions")
    if ("input" in body) == ("messages" in body):
        raise RequestError("give exactly one of 'input' (texts) and 'messages' (a chat turn with an image or a text)",
                           param="input")
    if "input" in body:
        items = body["input"]
        if isinstance(items, str):
            return model, [Query(text=text_field(items, "input", limits))], fmt
        items = _instances(items, "input", limits)
        return model, [Query(text=text_field(t, f"input[{i}]", limits)) for i, t in enumerate(items)], fmt
    texts, images = _user_content(body["messages"], limits, need_image=False)
    if images and texts:
        raise RequestError("messages: an image or a text, not both: under this model's embedding contract the "
                           "server adds the instruction itself", param="messages")
    if images:
        return model, [Query(image=images[0][0], raw=images[0][1])], fmt
    if len(texts) != 1:
        raise RequestError("messages: one text part to embed", param="messages")
    return model, [Query(text=texts[0])], fmt


@dataclass(frozen=True)
class ChatRequest:
    model: str
    image: Image.Image
    prompt: str
    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float


def openai_chat(body: Any, limits: Limits, served: list[str], default_prompt: str, default_tokens: int) -> ChatRequest:
    """``/v1/chat/completions``: one user turn with an image (data URL) and optionally a question."""
    if not isinstance(body, dict):
        raise RequestError("expected a JSON object (an OpenAI chat completion request)")
    model = openai_model(body, served)
    if body.get("stream"):
        raise RequestError("stream: streaming is not supported; leave it out or false", param="stream")
    int_field(body.get("n"), "n", 1, 1, 1)
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    tokens = int_field(tokens, "max_tokens", 1, limits.max_new_tokens, min(default_tokens, limits.max_new_tokens))
    temperature = float_field(body.get("temperature"), "temperature", 0.0, 2.0, 0.0)
    top_p = float_field(body.get("top_p"), "top_p", 1e-6, 1.0, 1.0)
    texts, images = _user_content(body.get("messages"), limits, need_image=True)
    prompt = " ".join(texts) if texts else default_prompt
    if len(prompt) > limits.max_text_chars:
        raise RequestError(f"messages: the question is longer than serve.max_text_chars = {limits.max_text_chars}",
                           param="messages")
    return ChatRequest(model, images[0][0], prompt, tokens, temperature, top_p)


def json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise RequestError(f"the body is not JSON ({err})") from None


# ----------------------------------------------------------------------------- body limit
class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes (by Content-Length, or counted as it streams in)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(send)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"error": f"request body exceeds serve.max_body_bytes = {self.limit}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
