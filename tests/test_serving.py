"""`cafe serve` on 127.0.0.1 with a tiny model (KServe V1/V2 endpoints, generation, feedback, traffic log),
the reindex marker of a production promotion with `cafe index`, and the monitor reference stored at
registration."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from cafe.registry import Registry
from cafe.stages.smoke import stop_server
from cafe.serving.traffic import TrafficLog
from tests.conftest import make_adapter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def model_dir(params, tmp_path):
    adapter = make_adapter(params)
    out = tmp_path / "model"
    adapter.save_pretrained(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


stop = stop_server  # a server started by a test, stopped by its pid


def _b64(path) -> str:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_serve_endpoints_traffic_log_and_feedback(world, params, model_dir, tmp_path):
    port = _free_port()
    gallery = world / "eval" / "retrieval_karpathy.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cafe.cli", "serve", "-m", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "-p", str(tmp_path / "none.yaml"), "-s", f"serve.gallery={gallery}", "-s", f"serve.index_store={tmp_path / 'idx'}",
           "-s", f"serve.traffic_store={tmp_path / 'traffic'}", "-s", "serve.top_k=5"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not become ready"
            time.sleep(0.5)
        names = {m for m in httpx.get(f"{base}/v1/models").json()["models"]}
        assert names == {"cafe", "cafe-generate"}

        image = world / "eval" / "images" / "ret000003.png"
        r = httpx.post(f"{base}/v1/models/cafe:predict", timeout=60,
                       json={"instances": [{"text": "a large red circle."}, {"image_b64": _b64(image)}]})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        adapter = make_adapter(params)
        expected = adapter.encode_texts(["a large red circle."])[0]
        assert np.allclose(preds[0]["embedding"], expected.numpy(), atol=1e-4)
        assert len(preds[0]["results"]) == 5 and all(x["id"].endswith(".png") for x in preds[0]["results"])
        scores = [x["score"] for x in preds[0]["results"]]
        assert scores == sorted(scores, reverse=True)
        assert preds[1]["results"][0]["id"] == "ret000003.png"  # an image finds itself in the gallery
        assert preds[0]["model_version"] == "local-model"

        v2 = httpx.post(f"{base}/v2/models/cafe/infer", timeout=60, json={"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a large red circle."]}]})
        assert v2.status_code == 200, v2.text
        out = {o["name"]: o for o in v2.json()["outputs"]}
        assert out["embedding"]["shape"] == [1, expected.shape[0]]
        assert np.allclose(out["embedding"]["data"], expected.numpy(), atol=1e-4)

        gen = httpx.post(f"{base}/v1/models/cafe-generate:predict", timeout=60,
                         json={"instances": [{"image_b64": _b64(image), "prompt": "Describe the image briefly."}]})
        assert gen.status_code == 200 and isinstance(gen.json()["predictions"][0]["text"], str)

        bad = httpx.post(f"{base}/v1/models/cafe:predict", json={"instances": [{"image_b64": "not-an-image"}]})
        assert bad.status_code == 400 and "instances[0]" in bad.text
        fb = httpx.post(f"{base}/v1/feedback", json={"request_id": preds[0]["request_id"], "chosen": "ret000001.png"})
        assert fb.status_code == 200, fb.text
        assert httpx.post(f"{base}/v1/feedback", json={"chosen": "x"}).status_code == 400
    finally:
        stop(proc)

    window = TrafficLog(tmp_path / "traffic").read_window()
    kinds = [r["kind"] for r in window.records]
    assert sorted(kinds) == ["generate", "image", "search", "search"]
    assert {r["model_version"] for r in window.records} == {"local-model"}
    labelled = window.labelled
    assert len(labelled) == 1 and labelled[0]["query"] == "a large red circle." and labelled[0]["chosen"] == "ret000001.png"
    image_rec = next(r for r in window.records if r["kind"] == "image")
    assert (tmp_path / "traffic" / image_rec["query"]["image_key"]).is_file()
    (index_json,) = (tmp_path / "idx").glob("w-*/*/index.json")  # keyed by the weights, labelled with the version
    assert json.loads(index_json.read_text())["model"] == "local-model"


def test_promotion_marks_reindex_and_cafe_index_recomputes(world, params, model_dir, tmp_path, monkeypatch):
    from cafe.cli import app
    from cafe.serving.index import gallery_items, reindex_status

    reg = Registry(tmp_path / "registry")
    retrained = tmp_path / "retrained"
    make_adapter(params, seed=1).save_pretrained(retrained)
    for folder in (model_dir, retrained):
        reg.register(folder, "cafe", metrics={}, gate={"passed": True}, data_version="d0")
    reg.register(model_dir, "cafe", metrics={}, gate={"passed": True}, data_version="d0")  # v3: v1's weights again
    gallery = world / "eval" / "retrieval_karpathy.json"
    items = gallery_items(gallery)
    assert reg.promote("cafe", 1, "production")["reindex_required"]
    assert not reg.promote("cafe", 1, "candidate")["reindex_required"]  # only production's gallery is served
    assert reindex_status(reg, "cafe", "production", tmp_path / "idx", items)["pending"]

    overrides = ["-s", f"registry.store={tmp_path / 'registry'}", "-s", f"serve.gallery={gallery}",
                 "-s", f"serve.index_store={tmp_path / 'idx'}"]
    monkeypatch.chdir(tmp_path)  # the pulled model goes to ./.cache
    result = CliRunner().invoke(app, ["index", "-p", "none.yaml", *overrides])
    assert result.exit_code == 0, result.output
    status = reindex_status(reg, "cafe", "production", tmp_path / "idx", items)
    assert status == {"alias": "production", "version": 1, "reindex_required": True, "indexed": True,
                      "pending": False, "stale_version": None}
    event = reg.promote("cafe", 2, "production")
    assert event["previous"] == 1 and event["reindex_required"]
    status = reindex_status(reg, "cafe", "production", tmp_path / "idx", items)
    assert status["pending"] and status["version"] == 2 and status["stale_version"] == 1
    assert reg.alias_history("cafe", "production")[-1]["reindex_required"] is True
    reg.promote("cafe", 3, "production")  # the index is keyed by the weights: v1's serves v3
    assert not reindex_status(reg, "cafe", "production", tmp_path / "idx", items)["pending"]


def test_reference_is_stored_with_the_registered_version(world, params, model_dir, tmp_path):
    from cafe.monitoring.reference import build_reference, fetch_reference, registry_files, save_reference

    cfg = params.monitor
    cfg.probe, cfg.probe_images, cfg.reference_images = str(world / "eval" / "retrieval_karpathy.json"), 10, 30
    meta, arrays = build_reference(make_adapter(params), cfg, top_k=10)
    assert arrays["image_embeddings"].shape == (30, meta["dim"]) and arrays["top1_scores"].shape == (30,)
    assert meta["validation"]["n"] == 30 and meta["probe"]["n"] == 50
    assert 0.0 <= meta["validation"]["R@5"] <= 1.0
    assert np.isclose(meta["top1_score"]["mean"], float(arrays["top1_scores"].mean()), atol=1e-6)
    ref_dir = tmp_path / "reference"
    save_reference(meta, arrays, ref_dir)
    reg = Registry(tmp_path / "registry")
    reg.register(model_dir, "cafe", metrics={}, gate={"passed": True}, data_version="d0",
                 extra_files=registry_files(ref_dir))
    got_meta, got_arrays, record = fetch_reference(reg, "cafe", "latest")
    assert got_meta == json.loads(json.dumps(meta)) and record["version"] == 1
    assert torch.equal(torch.from_numpy(got_arrays["text_embeddings"]), torch.from_numpy(arrays["text_embeddings"]))
    reg.register(model_dir, "cafe", metrics={}, gate={"passed": True}, data_version="d0")
    with pytest.raises(FileNotFoundError, match="without a monitor reference"):
        fetch_reference(reg, "cafe", "latest")


def test_cluster_manifests_run_the_commands_with_valid_config():
    """The InferenceService and the monitor CronJob call `cafe serve` / `cafe monitor` with overrides that the
    config accepts; the gallery volume validates as a Kubernetes object."""
    from cafe.config import load_params
    from tests.kube_schemas import builtin_errors as validate
    from tests.test_manifests import assemble

    docs = {d["kind"]: d for d in assemble(ROOT / "manifests" / "serving")}
    assert set(docs) == {"PersistentVolumeClaim", "InferenceService"}
    assert validate(docs["PersistentVolumeClaim"]) == []
    (container,) = docs["InferenceService"]["spec"]["predictor"]["containers"]
    cron = yaml.safe_load((ROOT / "manifests" / "base" / "monitor-cronjob.yaml").read_text())
    (monitor,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    for args, command in ((container["args"], "serve"), (monitor["args"], "monitor")):
        assert args[0] == command
        overrides = [args[i + 1] for i, a in enumerate(args) if a == "-s"]
        p = load_params(ROOT / args[args.index("-p") + 1], overrides)
        assert p.registry.store == "s3://cafe/registry"
    assert load_params(ROOT / "params.yaml", [a for a in container["args"] if "=" in a]).serve.traffic_store == "s3://cafe/traffic"


def test_cafe_monitor_cli_reembeds_the_probe_with_the_served_model(world, params, model_dir, tmp_path):
    """`cafe monitor -m MODEL --reference DIR`: the probe set re-embedded with the model the reference was
    built with gives the registered probe R@K (drop 0); a tiny window is reported as not judged."""
    from cafe.cli import app
    from cafe.monitoring.reference import build_reference, save_reference

    karpathy = str(world / "eval" / "retrieval_karpathy.json")
    cfg = params.monitor
    cfg.probe, cfg.probe_images, cfg.reference_images = karpathy, 10, 30
    from cafe.models import load_adapter

    save_reference(*build_reference(load_adapter(model_dir, params.prompts, params.model), cfg, top_k=10),
                   tmp_path / "reference")
    log = TrafficLog(tmp_path / "traffic")
    rec = log.log_request([{"kind": "search", "query": "a large red circle.", "embedding": None,
                            "results": [{"id": "ret000001.png", "score": 0.9}], "top1_score": 0.9}], "cafe", "x")
    log.log_feedback(rec[0]["request_id"], "ret000001.png")
    sets = ["-s", f"monitor.probe={karpathy}", "-s", "monitor.probe_images=10", "-s", "monitor.reference_images=30",
            "-s", f"monitor.traffic_store={tmp_path / 'traffic'}", "-s", f"serve.gallery={karpathy}"]
    result = CliRunner().invoke(app, ["monitor", "-m", str(model_dir), "--reference", str(tmp_path / "reference"),
                                      "-o", str(tmp_path / "out"), "--pairs-out", str(tmp_path / "pairs"),
                                      "-p", str(tmp_path / "none.yaml"), *sets])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    probe = summary["signals"]["probe"]
    assert probe["drop"] == pytest.approx(0.0, abs=1e-9) and probe["reference"] == probe["recall"]
    assert summary["decision"] == "warn"  # the one logged embedding is missing: 100% invalid
    assert summary["signals"]["invalid"]["examples"][0]["why"] == "missing"
    assert any("1 labelled queries" in n for n in summary["not_judged"])
    # the window's one labelled search as a self-contained instruction folder: the chosen image copied in
    (record,) = json.loads((tmp_path / "pairs" / "instructions.json").read_text())
    assert record["conversations"] == [{"from": "human", "value": f"<image>\n{params.prompts.caption}"},
                                       {"from": "gpt", "value": "a large red circle."}]
    assert (tmp_path / "pairs" / record["image"]).read_bytes() == (world / "eval" / "images" / "ret000001.png").read_bytes()


def test_retraining_modes(world, params, model_dir, tmp_path):
    """record writes the request (the window folder as the training pipeline's data_uri); local repurposes the
    folder into shards and fine-tunes on them from the served model; kfp without an endpoint, an empty window
    and an unknown mode are refused with the reason."""
    from cafe.data.pair_folder import write_pair_folder
    from cafe.data.shards import read_data_version
    from cafe.monitoring.retrain import start_retraining
    from pipelines.training import build

    images = sorted((world / "eval" / "images").glob("ret*.png"))[:4]
    pairs = tmp_path / "window"
    write_pair_folder([{"id": f"t{i}", "image": str(p), "caption": f"query {i}."} for i, p in enumerate(images)],
                      pairs, params.prompts.caption)
    params.monitor.retrain_overrides = ["train.epochs=1", "train.batch_size=2", f"train.base_model={model_dir}",
                                        f"train.output={tmp_path / 'retrained'}", "repurpose.val_fraction=0"]
    request = start_retraining(params, str(pairs), "record", str(tmp_path / "request.json"))
    assert request["pairs_count"] == 4 and request["started"] is None
    arguments = json.loads((tmp_path / "request.json").read_text())["arguments"]
    assert arguments == {"data_uri": str(pairs), "overrides": params.monitor.retrain_overrides}
    assert set(arguments) <= set(build("img", params).component_spec.inputs)  # what kfp mode submits are the training pipeline's parameters

    local = start_retraining(params, str(pairs), "local", str(tmp_path / "request.json"))["started"]
    shards = tmp_path / "retrained" / "pairs"
    assert local["data"] == str(shards) and local["kept"] == 4
    assert local["data_version"] == read_data_version(shards)
    assert (Path(local["local_model"]) / "config.json").is_file()
    # one epoch over the four repurposed pairs in batches of two: two steps (the world's pairs would be 80)
    steps = [json.loads(l) for l in (tmp_path / "retrained" / "train_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]

    with pytest.raises(ValueError, match="KFP endpoint"):
        start_retraining(params, str(pairs), "kfp", str(tmp_path / "r.json"))
    with pytest.raises(ValueError, match="use kfp, local or record"):
        start_retraining(params, str(pairs), "later", str(tmp_path / "r.json"))
    write_pair_folder([], tmp_path / "empty", params.prompts.caption)
    with pytest.raises(ValueError, match="no feedback-labelled pairs"):
        start_retraining(params, str(tmp_path / "empty"), "record", str(tmp_path / "r.json"))
