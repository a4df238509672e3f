"""The model registry on a local folder and on a real S3 server process (moto on 127.0.0.1): complete-or-absent
versions under concurrency and crashes, lineage, aliases, checksum-verified pulls, and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cafe.registry import CARD, RECORD_FILE, ChecksumMismatch, NumberedLog, Registry, RegistryError
from cafe.storage import open_store

GATE = {"passed": True, "checks": [{"name": "i2t_R@1", "value": 0.5, "min": 0.1, "passed": True}]}


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path) -> str:
    return str(tmp_path / "registry") if request.param == "local" else request.getfixturevalue("s3_uri")


def fake_model(root: Path, tag: str, files: int = 4, size: int = 4096) -> Path:
    """A model directory's shape (config, weights, processor files) with content unique to ``tag``."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "fake", "tag": tag}))
    seed = hashlib.sha256(tag.encode()).digest()
    for i in range(files):
        (root / f"model-{i:05d}.safetensors").write_bytes(seed * (size // len(seed)))
    (root / "processor").mkdir()
    (root / "processor" / "tokenizer.json").write_text(json.dumps({"tag": tag}))
    return root


def register(reg: Registry, model: Path, name: str = "m", **kwargs) -> dict:
    kwargs = {"metrics": {"i2t_R@1": 0.5}, "gate": GATE, "data_version": "d" * 64,
              "params": {"train": {"seed": 0}}, **kwargs}
    return reg.register(model, name, **kwargs)


def test_a_version_records_files_lineage_and_card(store_uri, tmp_path):
    reg = Registry(store_uri)
    model = fake_model(tmp_path / "model", "a")
    record = register(reg, model, metrics={"i2t_R@1": 0.5, "t2i_R@1": 0.25}, parent="models/base/model",
                      extra_files={"reports/eval.html": model / "config.json"})
    assert record["version"] == 1 and record["data_version"] == "d" * 64
    assert record["parent"] == "models/base/model" and record["code_version"]
    for path in model.rglob("*"):
        if path.is_file():
            rel = path.relative_to(model).as_posix()
            assert record["files"][rel]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert {"metrics.json", "gate.json", "params.yaml", CARD, "reports/eval.html"} <= set(record["files"])
    assert [r | {"aliases": []} for r in reg.list("m")] == [reg.show("m", "latest")] == [reg.show("m", "v1")]

    second = register(reg, fake_model(tmp_path / "model2", "b"), parent="m:latest")
    assert second["version"] == 2 and second["parent"] == "m:v1"  # a registry parent is pinned to its version

    pulled = reg.pull("m", 1, tmp_path / "pulled")
    for rel in record["files"]:
        assert (pulled / rel).is_file()
    assert (pulled / "model-00000.safetensors").read_bytes() == (model / "model-00000.safetensors").read_bytes()
    card = (pulled / CARD).read_text()
    assert "0.2500" in card and "d" * 64 in card and "passed" in card
    assert json.loads((pulled / RECORD_FILE).read_text())["version"] == 1
    assert "train" in (pulled / "params.yaml").read_text()


def test_eight_concurrent_registrations_give_eight_complete_versions(store_uri, tmp_path):
    reg = Registry(store_uri)
    models = [fake_model(tmp_path / f"model{i}", f"model {i}", files=2) for i in range(8)]
    errors = []

    def run(i):
        try:
            register(reg, models[i], metrics={"writer": i})
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    records = reg.list("m")
    assert len({r["version"] for r in records}) == 8
    assert sorted(r["metrics"]["writer"] for r in records) == list(range(8))
    store = open_store(store_uri)
    for r in records:  # each version holds exactly its own writer's files
        config = store.get_bytes(f"{r['prefix']}/config.json")
        assert json.loads(config)["tag"] == f"model {r['metrics']['writer']}"
        assert hashlib.sha256(config).hexdigest() == r["files"]["config.json"]["sha256"]
    got = reg.pull("m", records[-1]["version"], tmp_path / "pulled")
    writer = records[-1]["metrics"]["writer"]
    assert (got / "model-00001.safetensors").read_bytes() == (models[writer] / "model-00001.safetensors").read_bytes()


def test_numbered_log_never_gives_one_number_twice(store_uri):
    log = NumberedLog(open_store(store_uri), "log", "claims")
    got = []
    threads = [threading.Thread(target=lambda i=i: got.append(log.append(lambda n: {"n": n, "writer": i})))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = log.entries()
    assert len(entries) == 8 and sorted(e["writer"] for e in entries) == list(range(8))
    assert [e["n"] for e in entries] == log.numbers()


class FailingStore:
    """Delegates to a store but fails on the n-th file upload, as a crash or a lost connection would."""

    def __init__(self, store, fail_at: int):
        self._store, self.fail_at, self.uploads = store, fail_at, 0

    def put_file(self, key, path):
        self.uploads += 1
        if self.uploads == self.fail_at:
            raise ConnectionError(f"injected failure uploading {key}")
        self._store.put_file(key, path)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_an_upload_failing_half_way_leaves_no_version(store_uri, tmp_path):
    store = open_store(store_uri)
    reg = Registry(store)
    failing = Registry(store)
    failing.store = FailingStore(store, fail_at=3)
    with pytest.raises(ConnectionError, match="injected"):
        register(failing, fake_model(tmp_path / "model", "x", files=6))
    assert failing.store.uploads == 3
    assert reg.list("m") == []
    with pytest.raises(RegistryError, match="no registered versions"):
        reg.pull("m", "latest", tmp_path / "nothing")
    assert store.list("models/m/files/") == []  # the partial upload was cleaned up
    assert register(reg, fake_model(tmp_path / "model2", "y"))["version"] == 1


KILLED_UPLOAD = textwrap.dedent("""
    import sys, time
    from cafe.registry import Registry
    from cafe.storage import open_store

    store = open_store(sys.argv[1])
    upload = store.put_file

    def slow_put_file(key, path):
        upload(key, path)
        print("uploaded", key, flush=True)
        time.sleep(0.3)

    store.put_file = slow_put_file
    Registry(store).register(sys.argv[2], "m", metrics={}, gate={"passed": True}, data_version="d")
    print("registered", flush=True)
""")


def test_an_upload_killed_half_way_leaves_no_visible_version(store_uri, tmp_path):
    model = fake_model(tmp_path / "model", "killed", files=10)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_UPLOAD, store_uri, str(model)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parents[1], env=os.environ.copy())
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert all(line.startswith("uploaded") for line in lines), lines
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = open_store(store_uri)
    reg = Registry(store)
    assert reg.list("m") == []
    orphans = store.list("models/m/files/")
    assert len(orphans) >= 3  # the killed process left files, but no version points at them
    assert reg.gc("m", min_age_s=3600) == []  # too young: could be an upload in progress
    assert len(reg.gc("m", min_age_s=0)) == 1 and store.list("models/m/files/") == []
    assert register(reg, fake_model(tmp_path / "model2", "next"))["version"] == 1


def test_promote_and_rollback_keep_the_alias_history(store_uri, tmp_path):
    reg = Registry(store_uri)
    for i in range(3):
        register(reg, fake_model(tmp_path / f"model{i}", str(i)), alias="candidate")
    assert reg.aliases("m") == {"candidate": 3}
    for version in (1, 2, "v3"):
        reg.promote("m", version, "production")
    assert reg.resolve("m", "production") == 3 and reg.show("m", 3)["aliases"] == ["candidate", "production"]
    assert reg.rollback("m", "production") == {"alias": "production", "version": 2, "from": 3}
    assert reg.rollback("m", "production")["version"] == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("m", "production")
    assert reg.show("m", "production")["version"] == 1
    history = reg.alias_history("m", "production")
    assert [(e["action"], e.get("version", e.get("from"))) for e in history] == [
        ("promote", 1), ("promote", 2), ("promote", 3), ("rollback", 3), ("rollback", 2)]
    with pytest.raises(RegistryError, match="no version 7"):
        reg.promote("m", 7, "production")
    with pytest.raises(RegistryError, match="would read as a version"):
        reg.promote("m", 1, "v2")


def test_pull_detects_a_changed_file(store_uri, tmp_path):
    store = open_store(store_uri)
    reg = Registry(store)
    record = register(reg, fake_model(tmp_path / "model", "t"))
    store.put_bytes(f"{record['prefix']}/model-00002.safetensors", b"tampered")
    with pytest.raises(ChecksumMismatch, match="model-00002.safetensors has sha256"):
        reg.pull("m", 1, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists() and list(tmp_path.glob(".pulled*")) == []


def test_register_refuses_bad_input(tmp_path):
    reg = Registry(tmp_path / "registry")
    model = fake_model(tmp_path / "model", "z")
    with pytest.raises(RegistryError, match="no config.json"):
        register(reg, tmp_path)
    with pytest.raises(RegistryError, match="the gate did not pass"):
        register(reg, model, gate={"passed": False, "checks": []})
    with pytest.raises(RegistryError, match="data_version is required"):
        register(reg, model, data_version="")
    with pytest.raises(RegistryError, match="model name"):
        register(reg, model, name="Bad Name")
    assert register(reg, model, gate={"passed": False, "checks": []}, allow_failed_gate=True)["version"] == 1


def test_a_pulled_model_reproduces_the_registered_embeddings(params, s3_uri, tmp_path):
    from cafe.models import load_adapter
    from tests.conftest import make_adapter

    torch.manual_seed(0)
    adapter = make_adapter(params)
    model_dir = tmp_path / "model"
    adapter.save_pretrained(model_dir)
    size = params.synth.image_size
    images = [Image.fromarray((torch.rand(size, size, 3) * 255).byte().numpy()) for _ in range(3)]
    texts = ["a red circle", "two blue squares"]
    adapter.model.eval()
    with torch.no_grad():
        before = adapter.encode_images(images), adapter.encode_texts(texts)

    reg = Registry(s3_uri)
    reg.register(model_dir, "tiny", metrics={}, gate=GATE, data_version="d", params=params, alias="production")
    pulled = load_adapter(reg.pull("tiny", "production", tmp_path / "pulled"), params.prompts, params.model)
    pulled.model.eval()
    with torch.no_grad():
        after = pulled.encode_images(images), pulled.encode_texts(texts)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_cli_register_list_promote_rollback_pull(tmp_path, monkeypatch):
    from cafe.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "data_version.json").write_text(json.dumps({"sha256": "e" * 64}))
    (tmp_path / "metrics.json").write_text(json.dumps({"i2t_R@1": 0.75, "t2i_R@1": 0.5}))
    (tmp_path / "gate.json").write_text(json.dumps(GATE))
    store = ["-s", f"registry.store={tmp_path / 'reg'}", "-s", "registry.name=tiny"]
    for i in range(2):
        result = runner.invoke(app, ["register", "-m", str(fake_model(tmp_path / f"model{i}", str(i))),
                                     "--metrics", "metrics.json", "--gate", "gate.json", "--data-version", "pairs",
                                     "--record-out", f"record{i}.json", "--no-reference", *store])
        assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "record1.json").read_text())
    assert record["version"] == 2 and record["data_version"] == "e" * 64 and record["parent"] == "models/base"

    result = runner.invoke(app, ["registry", "list", *store])
    assert result.exit_code == 0 and "v1" in result.output and "0.750" in result.output, result.output
    assert runner.invoke(app, ["registry", "promote", "1", "production", *store]).exit_code == 0
    assert runner.invoke(app, ["registry", "promote", "2", "production", *store]).exit_code == 0
    result = runner.invoke(app, ["registry", "rollback", "production", *store])
    assert result.exit_code == 0 and "v2 -> v1" in result.output, result.output
    result = runner.invoke(app, ["registry", "show", "production", "--json", *store])
    assert json.loads(result.stdout)["version"] == 1 and json.loads(result.stdout)["aliases"] == ["production"]
    result = runner.invoke(app, ["registry", "pull", "candidate", "out", *store])
    assert result.exit_code == 0 and json.loads((tmp_path / "out" / RECORD_FILE).read_text())["version"] == 2

    (tmp_path / "gate.json").write_text(json.dumps({"passed": False, "checks": []}))
    result = runner.invoke(app, ["register", "-m", "model0", "--metrics", "metrics.json", "--gate", "gate.json",
                                 "--data-version", "pairs", *store])
    assert result.exit_code == 1 and "gate did not pass" in result.output
    result = runner.invoke(app, ["registry", "show", "v9", *store])
    assert result.exit_code == 1 and "no version 9" in result.output
