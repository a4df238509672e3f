"""`cafe serve` on 127.0.0.1: the OpenAI-compatible API with the official ``openai`` client (embeddings equal to
KServe V1's, image embeddings in vLLM's chat form, chat completions equal to V1 generation), request validation
(4xx naming the field, 413, images refused before decoding, V2 names/datatypes/metadata, unknown feedback ids
404 and not stored), property-based request bodies (never a 5xx, the server stays up, one traffic record per
answered instance), and the embedding contract between a model, the prompts it is served with and its index."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cafe.config import Params
from cafe.serving.traffic import TrafficLog
from cafe.stages.smoke import _free_port, _wait_ready
from tests.conftest import SMALL_MODEL, make_adapter
from tests.test_serving import stop

ROOT = Path(__file__).resolve().parents[1]
MAX_BODY = 400_000
MAX_PIXELS = 1_000_000


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _records(traffic: Path) -> list[dict]:
    return TrafficLog(traffic).read_window().records


class Server:
    def __init__(self, base: str, traffic: Path, proc: subprocess.Popen, image_b64: str, adapter):
        self.base, self.traffic, self.proc, self.image_b64, self.adapter = base, traffic, proc, image_b64, adapter

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.base + path, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    p = Params()
    p.model.tiny = SMALL_MODEL.model_copy()
    adapter = make_adapter(p)
    adapter.save_pretrained(tmp / "model")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cafe.cli", "serve", "-m", str(tmp / "model"), "--host", "127.0.0.1", "--port",
           str(port), "-p", str(tmp / "none.yaml"), "-s", f"serve.gallery={world / 'eval' / 'retrieval_karpathy.json'}",
           "-s", f"serve.index_store={tmp / 'idx'}", "-s", f"serve.traffic_store={tmp / 'traffic'}",
           "-s", "serve.top_k=3", "-s", f"serve.max_body_bytes={MAX_BODY}", "-s", "serve.max_instances=8",
           "-s", "serve.max_new_tokens=8", "-s", "serve.max_new_tokens_limit=16", "-s", "serve.max_text_chars=500",
           "-s", f"repurpose.images.max_pixels={MAX_PIXELS}"]
    log = open(tmp / "server.log", "w")  # a file, not a pipe: an undrained pipe would block the server's logging
    proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base, 240, tmp / "server.log")
        with Image.open(world / "eval" / "images" / "ret000003.png") as img:
            image = _png_b64(img.convert("RGB"))
        yield Server(base, tmp / "traffic", proc, image, adapter)
    finally:
        stop(proc)
        log.close()


def test_openai_client_embeddings_chat_and_models(server):
    import openai

    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert {"cafe", "cafe-generate"} <= {m.id for m in client.models.list()}
    assert set(httpx.get(server.base + "/v1/models").json()["models"]) == {"cafe", "cafe-generate"}  # KServe V1 too
    before = len(_records(server.traffic))

    texts = ["a large red circle.", "a small blue square."]
    v1 = server.post("/v1/models/cafe:predict", json={"instances": [{"text": t} for t in texts]}).json()["predictions"]
    got = client.embeddings.create(model="cafe", input=texts)  # the client asks for base64 by default
    floats = client.embeddings.create(model="cafe", input=texts, encoding_format="float")
    for i in range(2):
        assert np.allclose(got.data[i].embedding, v1[i]["embedding"], atol=1e-6)
        assert np.allclose(floats.data[i].embedding, v1[i]["embedding"], atol=1e-6)
    assert len(got.data[0].embedding) == server.adapter.model.config.text_config.hidden_size

    # an image in vLLM's chat form for pooling models: one user turn with an image_url data URL
    v1_image = server.post("/v1/models/cafe:predict", json={"instances": [{"image_b64": server.image_b64}]}).json()
    url = f"data:image/png;base64,{server.image_b64}"
    chat_form = client.post("/embeddings", cast_to=object, body={
        "model": "cafe", "encoding_format": "float",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})
    assert np.allclose(chat_form["data"][0]["embedding"], v1_image["predictions"][0]["embedding"], atol=1e-6)

    question = "Describe the image briefly."
    answer = client.chat.completions.create(model="cafe", max_tokens=6, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}])
    v1_gen = server.post("/v1/models/cafe-generate:predict", json={
        "instances": [{"image_b64": server.image_b64, "prompt": question}], "parameters": {"max_new_tokens": 6}})
    assert answer.choices[0].message.content == v1_gen.json()["predictions"][0]["text"]
    assert answer.choices[0].message.role == "assistant"

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="not-served", input="x")
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.chat.completions.create(model="cafe", stream=True, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}])
    with pytest.raises(openai.BadRequestError, match="data:image"):
        client.chat.completions.create(model="cafe", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}]}])

    # every call answered one traffic record per instance, in the same log as V1's
    new = _records(server.traffic)[before:]
    assert [r["api"] for r in new].count("openai") == 2 + 2 + 1 + 1  # two texts twice, the image, the chat answer
    assert sorted(r["kind"] for r in new) == sorted(["search"] * 6 + ["image"] * 2 + ["generate"] * 2)


BAD_V1 = [
    ({"instances": [{"text": 5}]}, 400, "instances[0].text"),
    ({"instances": [{"text": "ok"}, {"image_b64": 7}]}, 400, "instances[1].image_b64"),
    ({"instances": [{"text": "ok", "image_b64": "x"}]}, 400, "instances[0]"),
    ({"instances": [{"txt": "ok"}]}, 400, "instances[0].txt"),
    ({"instances": [{"text": "ok"}], "parameters": {"top_k": 0}}, 400, "parameters.top_k"),
    ({"instances": [{"text": "ok"}], "parameters": {"top_k": "5"}}, 400, "parameters.top_k"),
    ({"instances": [{"text": "x" * 501}]}, 400, "instances[0].text"),
    ({"instances": [{"text": "ok"}] * 9}, 413, "instances"),
    ({"instances": []}, 400, "instances"),
    ({"instances": "text"}, 400, "instances"),
    ({"instances": [{"text": "\ud800"}]}, 400, "surrogate"),  # refused by the JSON decoder already
    ({"instances": [{"text": "a <image> cat"}]}, 400, "instances[0].text"),  # was a 500 from the processor
    ([1, 2], 400, "instances"),
]


@pytest.mark.parametrize("body,status,field", BAD_V1)
def test_v1_bad_requests_get_4xx_naming_the_field(server, body, status, field):
    r = server.post("/v1/models/cafe:predict", content=json.dumps(body))
    assert r.status_code == status, r.text
    assert field in r.json()["error"]


def test_chat_markers_in_any_text_field_are_a_400_not_a_500_from_the_processor(world):
    """A search text, a prompt or a chat question holding an image placeholder or a turn marker reached the
    processor, which raised (``<image>`` tokens without an image): a 500. Every route's parser refuses it."""
    from types import SimpleNamespace

    from cafe.serving.requests import (Limits, RequestError, generate_instances, openai_chat,
                                       openai_embedding_queries, search_instances, v2_search_inputs)
    from cafe.serving.server import Service

    p = Params()
    p.model.tiny = SMALL_MODEL.model_copy()
    service = Service(make_adapter(p), "v", None)
    with pytest.raises(ValueError, match="image"):  # what the unchecked text did deep in the processor
        service.adapter.encode_texts(["a <image> cat"])
    limits, url = Limits(), "data:image/png;base64," + _png_b64(Image.new("RGB", (32, 32), (9, 9, 9)))
    for marker in ("<image>", "<|im_end|>", "<|vision_start|>", "[INST]", "<start_of_turn>user", "<ima\u200bge>"):
        text = f"a red {marker} cube"
        calls = {
            "instances[0].text": lambda: service.search([{"text": text}], 3),
            "instances[0].prompt": lambda: generate_instances([{"image_b64": url.split(",")[1], "prompt": text}],
                                                              limits, "Describe."),
            "inputs[0].data[0]": lambda: v2_search_inputs(SimpleNamespace(inputs=[SimpleNamespace(
                name="text", datatype="BYTES", shape=[1], data=[text])]), limits),
            "input[0]": lambda: openai_embedding_queries({"input": [text]}, limits, ["cafe"]),
            "messages[0].content[0].text": lambda: openai_chat(
                {"messages": [{"role": "user", "content": [{"type": "text", "text": text},
                                                           {"type": "image_url", "image_url": {"url": url}}]}]},
                limits, ["cafe"], "Describe.", 8),
        }
        for field, call in calls.items():
            with pytest.raises(RequestError, match="chat-template marker") as err:
                call()
            assert err.value.status == 400 and err.value.param == field, (marker, field)
    assert service.search([{"text": "a red cube <b>bold</b> 3 < 4 > 2"}], 3)  # plain text with brackets is fine


def test_images_checked_before_decoding_body_limit_v2_and_feedback(server):
    before = len(_records(server.traffic))
    # 2000 x 2000 = 4 MP in the header, over repurpose.images.max_pixels: refused without decoding
    big = _png_b64(Image.new("RGB", (2000, 2000), (10, 10, 10)))
    assert len(big) < MAX_BODY
    r = server.post("/v1/models/cafe:predict", json={"instances": [{"text": "ok"}, {"image_b64": big}]})
    assert r.status_code == 413 and "instances[1].image_b64" in r.text and "image_bomb" in r.text
    truncated = base64.b64encode(base64.b64decode(server.image_b64)[:-40]).decode()
    r = server.post("/v1/models/cafe-generate:predict", json={"instances": [{"image_b64": truncated}]})
    assert r.status_code == 400 and "instances[0].image_b64" in r.text
    r = server.post("/v1/models/cafe:predict", content=b'{"instances": [{"text": "' + b"a" * MAX_BODY + b'"}]}')
    assert r.status_code == 413 and "max_body_bytes" in r.text

    meta = httpx.get(server.base + "/v2/models/cafe").json()
    dim = server.adapter.model.config.text_config.hidden_size
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"text": "BYTES", "image_b64": "BYTES"}
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"embedding": [-1, dim], "results": [-1]}
    for inp, field in (({"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}, "inputs[0].datatype"),
                       ({"name": "query", "shape": [1], "datatype": "BYTES", "data": ["x"]}, "inputs[0].name"),
                       ({"name": "text", "shape": [3], "datatype": "BYTES", "data": ["x"]}, "inputs[0].shape")):
        r = server.post("/v2/models/cafe/infer", json={"inputs": [inp]})
        assert r.status_code == 400 and field in r.text, r.text

    ok = server.post("/v1/models/cafe:predict", json={"instances": [{"text": "a large red circle."}]}).json()
    feedback_dir = server.traffic / "feedback"
    count = lambda: len(list(feedback_dir.rglob("*.json"))) if feedback_dir.exists() else 0  # noqa: E731
    stored = count()
    request_id = ok["predictions"][0]["request_id"]
    for rid in ("20261203T000000.000000-0123456789abcdef-0", request_id[:-1] + "7", "../../etc", "x"):
        r = server.post("/v1/feedback", json={"request_id": rid, "chosen": "ret000001.png"})
        assert r.status_code in (400, 404) and "request_id" in r.text
    assert server.post("/v1/feedback", json={"request_id": request_id, "chosen": "nope.png"}).status_code == 400
    assert count() == stored  # nothing stored for refused feedback
    assert server.post("/v1/feedback", json={"request_id": request_id, "chosen": "ret000001.png"}).status_code == 200
    assert count() == stored + 1
    assert len(_records(server.traffic)) == before + 1  # only the one answered instance was logged


def test_property_based_bodies_never_5xx_and_logged_once(server):
    """Generated bodies for every route: no 5xx, the server stays up, and the traffic log grows by exactly the
    number of instances answered."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    image = server.image_b64
    json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                               | st.text(max_size=20), lambda c: st.lists(c, max_size=3)
                               | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8)
    texts = st.text(min_size=0, max_size=40) | st.sampled_from(["a red circle.", " ", "\ud800", "<image>"])
    images = st.sampled_from([image, image[:-8], "not base64!", "", _png_b64(Image.new("RGB", (4, 4)))])
    field = st.one_of(texts, images, json_values)
    instance = st.one_of(st.fixed_dictionaries({"text": texts}), st.fixed_dictionaries({"image_b64": images}),
                         st.dictionaries(st.sampled_from(["text", "image_b64", "prompt", "extra"]), field, max_size=3),
                         json_values)
    parameters = st.one_of(st.none(), st.fixed_dictionaries({"top_k": st.integers(-2, 200) | json_values}),
                           st.fixed_dictionaries({"max_new_tokens": st.integers(-2, 40) | json_values}))
    v1 = st.one_of(st.fixed_dictionaries({"instances": st.lists(instance, max_size=4)},
                                         optional={"parameters": parameters}), json_values)
    v2_input = st.fixed_dictionaries({"name": st.sampled_from(["text", "image_b64", "other"]),
                                      "datatype": st.sampled_from(["BYTES", "FP32", "INT64", "BOOL"]),
                                      "shape": st.lists(st.integers(-1, 4), max_size=3),
                                      "data": st.lists(st.one_of(texts, images, st.integers(), st.floats(allow_nan=False)),
                                                       max_size=3)})
    v2 = st.one_of(st.fixed_dictionaries({"inputs": st.lists(v2_input, max_size=2)}), json_values)
    url = st.one_of(images.map(lambda b: f"data:image/png;base64,{b}"), st.text(max_size=20), json_values)
    part = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                     st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": url})}),
                     json_values)
    messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "x"]),
                                               "content": st.one_of(texts, st.lists(part, max_size=3))}), max_size=2)
    embeddings = st.one_of(st.fixed_dictionaries({"model": st.sampled_from(["cafe", "other"])}, optional={
        "input": st.one_of(texts, st.lists(texts, max_size=3), json_values), "messages": messages,
        "encoding_format": st.sampled_from(["float", "base64", "int8"]), "dimensions": json_values}), json_values)
    chat = st.one_of(st.fixed_dictionaries({"model": st.just("cafe"), "messages": messages}, optional={
        "max_tokens": st.integers(-1, 30) | json_values, "temperature": st.floats(-1, 3) | json_values,
        "top_p": st.floats(-1, 2) | json_values, "stream": st.booleans(), "n": st.integers(0, 3)}), json_values)
    feedback = st.fixed_dictionaries({}, optional={"request_id": st.text(max_size=50) | json_values,
                                                   "chosen": texts | json_values})
    words = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30).filter(str.strip)
    valid = st.one_of(  # well-formed bodies, so that answered requests are part of every run
        st.tuples(st.just("/v1/models/cafe:predict"), st.fixed_dictionaries({"instances": st.lists(st.one_of(
            st.fixed_dictionaries({"text": words}), st.just({"image_b64": image})), min_size=1, max_size=3)})),
        st.tuples(st.just("/v1/embeddings"), st.fixed_dictionaries({"model": st.just("cafe"),
                                                                   "input": st.lists(words, min_size=1, max_size=3)})),
        st.tuples(st.just("/v2/models/cafe/infer"), words.map(lambda w: {"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": [w]}]})))
    routes = st.one_of(valid, st.tuples(st.just("/v1/models/cafe:predict"), v1), st.tuples(st.just("/v1/models/cafe-generate:predict"), v1),
                       st.tuples(st.just("/v2/models/cafe/infer"), v2), st.tuples(st.just("/v1/embeddings"), embeddings),
                       st.tuples(st.just("/v1/chat/completions"), chat), st.tuples(st.just("/v1/feedback"), feedback))
    before = len(_records(server.traffic))
    answered = {"n": 0, "ok": 0}

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(routes)
    def one_request(route):
        path, body = route
        try:
            raw = json.dumps(body).encode()
        except (ValueError, UnicodeEncodeError):
            return
        r = server.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500, (path, body, r.text)
        assert server.proc.poll() is None
        if r.status_code == 200:
            answered["ok"] += 1
            out = r.json()
            if path.startswith("/v1/models/"):
                answered["n"] += len(out["predictions"])
            elif path.startswith("/v2/"):
                answered["n"] += next(o["shape"][0] for o in out["outputs"] if o["name"] == "results")
            elif path == "/v1/embeddings":
                answered["n"] += len(out["data"])
            elif path == "/v1/chat/completions":
                answered["n"] += 1

    one_request()
    assert httpx.get(server.base + "/v2/health/ready", timeout=5).status_code == 200
    assert answered["ok"] > 0  # some generated bodies were valid and answered
    assert len(_records(server.traffic)) == before + answered["n"]


def test_contracts_refused_between_model_prompts_and_index(world, params, tmp_path):
    from cafe.contract import ContractMismatch
    from cafe.serving.index import index_key, weights_digest
    from cafe.serving.server import open_service

    model = tmp_path / "model"
    make_adapter(params).save_pretrained(model)
    params.serve.gallery = str(world / "eval" / "retrieval_karpathy.json")
    params.serve.index_store, params.serve.traffic_store = str(tmp_path / "idx"), str(tmp_path / "traffic")
    params.model.image_cache_mb = 64  # the training cache: a server keeps no user's image
    first = open_service(params, str(model), log=lambda _: None)
    key = index_key(weights_digest(model))
    assert (tmp_path / "idx" / key).is_dir() and first.index.ids
    assert first.adapter.image_processor is first.adapter.processor.image_processor

    changed = params.model_copy(deep=True)
    changed.prompts.image_embed = "Summarise this image in one word:"
    with pytest.raises(ContractMismatch, match="image_prompt"):  # served with other prompts than it was saved with
        open_service(changed, str(model), log=lambda _: None)
    (model / "embedding_contract.json").unlink()  # a model without a saved contract: the index still decides
    with pytest.raises(ContractMismatch, match="gallery index .*image_prompt"):
        open_service(changed, str(model), log=lambda _: None)

    make_adapter(params, seed=1).save_pretrained(model)  # retrained into the same folder: a new index
    assert index_key(weights_digest(model)) != key
    retrained = open_service(params, str(model), log=lambda _: None)
    assert not np.allclose(retrained.index.embeddings.numpy(), first.index.embeddings.numpy())


def test_a_model_retrained_in_a_pulled_folder_gets_a_new_index_and_no_stale_version_label(params, tmp_path):
    """The index key and version label came from ``registry_record.json`` whenever it was there: a model
    pulled from the registry and then retrained in the same folder kept the old sha256s, so the old gallery
    embeddings were served under the old version's name."""
    from cafe.registry import Registry
    from cafe.serving.index import files_digest, pulled_record, weights_digest
    from cafe.serving.server import resolve_model

    make_adapter(params).save_pretrained(tmp_path / "m0")
    reg = Registry(tmp_path / "registry")
    reg.register(tmp_path / "m0", "m", metrics={}, gate={"passed": True}, data_version="d")
    pulled = reg.pull("m", 1, tmp_path / "pulled")
    record = pulled_record(pulled)
    assert record is not None and resolve_model(str(pulled), params)[1] == "m-v1"
    pulled_key = weights_digest(pulled)
    assert pulled_key == files_digest({rel: meta["sha256"] for rel, meta in record["files"].items()})
    make_adapter(params, seed=1).save_pretrained(pulled)  # retrained into the pulled folder
    assert pulled_record(pulled) is None
    assert weights_digest(pulled) != pulled_key
    assert resolve_model(str(pulled), params)[1] == "local-pulled"
