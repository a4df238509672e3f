"""Registry hardening: tampered records and store listings cannot write outside the destination, records are
schema-checked on read, aliases move by compare-and-swap (a deterministic interleaving test with an
unconditional-write control that must fail it, then 8 processes on a folder and on the S3 test server), and
``gc`` removes partial files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cafe.registry import Registry, RegistryError
from cafe.storage import LocalStore, UnsafePath, open_store
from tests.test_registry import fake_model, register

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- escapes
def _tamper(store, record: dict, **changes) -> None:
    key = f"models/{record['name']}/versions/{record['version']:06d}.json"
    store.put_bytes(key, json.dumps({**record, **changes}).encode())


@pytest.mark.parametrize("bad", ["../../x", "/tmp/x-abs", "a/../../x", "a\\..\\x", "ok/./x", ""])
def test_a_tampered_file_name_is_refused_and_nothing_is_written_outside(tmp_path, bad):
    store = open_store(tmp_path / "registry")
    reg = Registry(store)
    record = register(reg, fake_model(tmp_path / "model", "a"))
    files = dict(record["files"])
    files[bad] = files.pop("config.json")
    _tamper(store, record, files=files)
    with pytest.raises(RegistryError, match="invalid record: files"):
        reg.pull("m", 1, tmp_path / "out" / "pulled")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out" / "x").exists()
    assert not Path("/tmp/x-abs").exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("field, value, message", [
    ("version", "1", "version"), ("prefix", "models/other/files/20260101T000000Z-000000000000", "prefix"),
    ("upload_id", "../../..", "upload_id"), ("files", {"config.json": {"sha256": "zz", "size": 1}}, "files"),
    ("files", {"config.json": {"sha256": "0" * 64, "size": -1}}, "files"), ("name", "other", "prefix"),
    ("metrics", "not a dict", "metrics")])
def test_records_are_schema_checked_on_read(tmp_path, field, value, message):
    store = open_store(tmp_path / "registry")
    reg = Registry(store)
    record = register(reg, fake_model(tmp_path / "model", "a"))
    _tamper(store, record, **{field: value})
    with pytest.raises(RegistryError, match=f"invalid record.*{message}"):
        reg.show("m", 1)


def test_damaged_json_and_tampered_alias_events_are_refused(tmp_path):
    store = open_store(tmp_path / "registry")
    reg = Registry(store)
    register(reg, fake_model(tmp_path / "model", "a"), alias="production")
    store.put_bytes("models/m/aliases/production/000002.json", b'{"seq": 2, "action": "delete-all"}')
    with pytest.raises(RegistryError, match="invalid record: action"):
        reg.resolve("m", "production")
    store.put_bytes("models/m/versions/000001.json", b"{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        reg.show("m", 1)


def test_a_symlink_in_the_destination_cannot_redirect_a_fetch(tmp_path):
    reg = Registry(tmp_path / "registry")
    register(reg, fake_model(tmp_path / "model", "a"))
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "processor").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RegistryError, match="outside"):
        reg.fetch("m", 1, ["processor/tokenizer.json"], dest)
    assert list(outside.iterdir()) == []


def test_a_symlink_planted_in_a_folder_store_is_neither_listed_nor_served(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("credentials")
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a/real.txt", b"x")
    (tmp_path / "store" / "a" / "leak.txt").symlink_to(secret)
    (tmp_path / "store" / "b").symlink_to(tmp_path, target_is_directory=True)
    assert store.list() == ["a/real.txt"]
    with pytest.raises(UnsafePath, match="outside"):
        store.get_bytes("a/leak.txt")
    with pytest.raises(UnsafePath, match="outside"):
        store.put_bytes("b/planted.txt", b"x")
    assert not (tmp_path / "planted.txt").exists()


class ListingStore(LocalStore):
    """A folder store whose listing also names keys a hostile server could return."""

    def __init__(self, root, extra):
        super().__init__(root)
        self.extra = extra

    def list(self, prefix=""):
        return super().list(prefix) + self.extra

    def get_file(self, key, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("from a hostile listing")


@pytest.mark.parametrize("key", ["p/../../escaped.txt", "p//etc/x", "p/a/../../../escaped.txt"])
def test_get_dir_refuses_listed_keys_that_leave_the_destination(tmp_path, key):
    store = ListingStore(tmp_path / "store", [key])
    store.put_bytes("p/ok.txt", b"x")
    with pytest.raises(UnsafePath):
        store.get_dir("p", tmp_path / "dest" / "sub")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "dest" / "escaped.txt").exists()


def test_put_dir_does_not_upload_a_symlink_out_of_the_folder(tmp_path):
    (tmp_path / "secret.txt").write_text("credentials")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").symlink_to(tmp_path / "secret.txt")
    store = LocalStore(tmp_path / "store")
    with pytest.raises(UnsafePath, match="weights.bin"):
        store.put_dir("m", folder)
    assert not store.exists("m/weights.bin")


# ----------------------------------------------------------------- atomic aliases
class Interleaved:
    """Delegates to a store, but holds each participant's first alias-log write until all participants have
    reached theirs (so all decided on the same log), then lets them write in ``rank`` order. With
    ``conditional=False`` the write is an unconditional put: the control that compare-and-swap needs."""

    def __init__(self, store, participants: int, rank, conditional: bool = True):
        self._store, self.participants, self.rank, self.conditional = store, participants, rank, conditional
        self.waiting: dict[str, float] = {}
        self.done: set[str] = set()
        self.cv = threading.Condition()

    def put_if_absent(self, key, data):
        me = threading.current_thread().name
        if "/aliases/" not in key or me in self.done or me in self.waiting:
            return self._write(key, data)
        with self.cv:
            self.waiting[me] = self.rank(me, json.loads(data))
            self.cv.notify_all()
            ok = self.cv.wait_for(lambda: len(self.waiting) + len(self.done) >= self.participants
                                  and me == min(self.waiting, key=self.waiting.get), timeout=20)
            assert ok, "interleaving did not happen"
            try:
                return self._write(key, data)
            finally:
                del self.waiting[me]
                self.done.add(me)
                self.cv.notify_all()

    def _write(self, key, data):
        return self._store.put_if_absent(key, data) if self.conditional else self._store.put_bytes(key, data)

    def __getattr__(self, name):
        return getattr(self._store, name)


def check_alias_log(events: list[dict], moved: int) -> list[int]:
    """Replay an alias log: each promotion names the version it replaced, each rollback the one it undid, and
    the operations that reported a move are exactly the events. Returns the alias stack."""
    stack: list[int] = []
    for e in events:
        if e["action"] == "promote":
            assert e["previous"] == (stack[-1] if stack else None), (e, stack)
            stack.append(e["version"])
        else:
            assert len(stack) >= 2 and e["from"] == stack[-1], (e, stack)
            stack.pop()
    assert len(events) == moved, f"{moved} operations reported a move, the log has {len(events)} events"
    return stack


def _threads(targets: dict):
    results, errors = {}, {}

    def run(name, fn):
        try:
            results[name] = fn()
        except RegistryError as err:
            errors[name] = err

    threads = [threading.Thread(target=run, args=(n, f), name=n) for n, f in targets.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


def _versions(reg, tmp_path, n):
    for i in range(n):
        register(reg, fake_model(tmp_path / f"model{i}", str(i), files=1, size=64))


def _two_rollbacks(tmp_path, conditional):
    reg = Registry(tmp_path / "registry")
    _versions(reg, tmp_path, 3)
    for v in (1, 2, 3):
        reg.promote("m", v, "production")
    reg.store = Interleaved(reg.store, 2, lambda name, data: name, conditional)
    results, errors = _threads({"a": lambda: reg.rollback("m", "production"),
                                "b": lambda: reg.rollback("m", "production")})
    stack = check_alias_log(reg.alias_history("m", "production"), 3 + len(results))
    assert len(results) == 1 and "moved by another operation" in str(*errors.values())
    assert stack == [1, 2]


def _two_promotions(tmp_path, conditional):
    reg = Registry(tmp_path / "registry")
    _versions(reg, tmp_path, 3)
    reg.promote("m", 1, "production")
    reg.store = Interleaved(reg.store, 2, lambda name, data: name, conditional)
    results, errors = _threads({"a": lambda: reg.promote("m", 2, "production"),
                                "b": lambda: reg.promote("m", 3, "production")})
    assert not errors
    check_alias_log(reg.alias_history("m", "production"), 1 + len(results))
    assert results["a"]["previous"] == 1 and results["b"]["previous"] == 2  # each names what it replaced


def _two_registrations(tmp_path, conditional):
    reg = Registry(tmp_path / "registry")
    models = [fake_model(tmp_path / f"model{i}", str(i), files=1, size=64) for i in range(2)]
    # the newer version's alias write goes first: the older registration must not move the alias back
    reg.store = Interleaved(reg.store, 2, lambda name, data: -data["version"], conditional)
    results, errors = _threads({"a": lambda: register(reg, models[0], alias="candidate"),
                                "b": lambda: register(reg, models[1], alias="candidate")})
    assert not errors
    newest = max(r["version"] for r in reg.list("m"))
    assert reg.resolve("m", "candidate") == newest
    check_alias_log(reg.alias_history("m", "candidate"), 1)


@pytest.mark.parametrize("scenario", [_two_rollbacks, _two_promotions, _two_registrations])
def test_interleaved_alias_operations_move_the_alias_one_step_each_or_are_refused(tmp_path, scenario):
    scenario(tmp_path, conditional=True)


@pytest.mark.parametrize("scenario", [_two_rollbacks, _two_promotions, _two_registrations])
def test_the_same_interleaving_breaks_the_invariants_with_unconditional_writes(tmp_path, scenario):
    with pytest.raises(AssertionError):
        scenario(tmp_path, conditional=False)


WORKER = """
import json, os, sys, time
from pathlib import Path
from cafe.registry import Registry, RegistryError
uri, name, i, go, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
reg = Registry(uri)
while not go.exists():
    time.sleep(0.005)
done = []
for k in range(3):
    try:
        if (i + k) % 3 == 2:
            r = reg.rollback(name, "production")
            done.append({"op": "rollback", **r, "moved": True})
        else:
            r = reg.promote(name, 1 + (i + k) % 4, "production")
            done.append({"op": "promote", **r})
    except RegistryError as err:
        done.append({"op": "refused", "error": str(err)})
out.write_text(json.dumps(done))
"""


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path) -> str:
    return str(tmp_path / "registry") if request.param == "local" else request.getfixturevalue("s3_uri")


def test_eight_processes_promoting_and_rolling_back_keep_the_alias_invariants(store_uri, tmp_path):
    reg = Registry(store_uri)
    _versions(reg, tmp_path, 4)
    reg.promote("m", 1, "production")
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, store_uri, "m", str(i), str(go), str(tmp_path / f"{i}.json")],
                              env=env) for i in range(8)]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        assert p.wait(timeout=300) == 0
    reports = [op for i in range(8) for op in json.loads((tmp_path / f"{i}.json").read_text())]
    moved = 1 + sum(1 for op in reports if op.get("moved"))
    events = reg.alias_history("m", "production")
    stack = check_alias_log(events, moved)
    assert reg.resolve("m", "production") == stack[-1]
    assert all("no earlier version" in op["error"] or "moved by another" in op["error"]
               for op in reports if op["op"] == "refused")
    assert sum(op["op"] == "rollback" for op in reports) >= 1  # some rollbacks applied, not all refused


REGISTER_WORKER = """
import sys, time
from pathlib import Path
from cafe.registry import Registry
from tests.test_registry import register
uri, model, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
register(Registry(uri), model, alias="candidate")
"""


def test_eight_processes_registering_with_an_alias_leave_it_at_the_newest_version(store_uri, tmp_path):
    from tests.test_registry import fake_model

    models = [fake_model(tmp_path / f"model{i}", str(i), files=1, size=64) for i in range(8)]
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", REGISTER_WORKER, store_uri, str(m), str(go)], env=env)
             for m in models]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        assert p.wait(timeout=300) == 0
    reg = Registry(store_uri)
    versions = [r["version"] for r in reg.list("m")]
    assert len(versions) == 8 and reg.resolve("m", "candidate") == max(versions)
    events = reg.alias_history("m", "candidate")
    check_alias_log(events, len(events))
    assert all(b["version"] > a["version"] for a, b in zip(events, events[1:]))  # only ever moved up
    for v in versions:
        assert reg.pull("m", v, tmp_path / f"pulled{v}").is_dir()  # every version whole


def test_gc_removes_partial_files_and_spares_fresh_ones(tmp_path):
    reg = Registry(tmp_path / "registry")
    record = register(reg, fake_model(tmp_path / "model", "a"))
    folder = tmp_path / "registry" / record["prefix"]
    stale = folder / ".model-00000.safetensors.abc123.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = folder / ".config.json.def456.tmp"
    fresh.write_bytes(b"in progress")
    (tmp_path / "registry" / "models" / "m" / "files" / "not-an-upload").mkdir()
    (tmp_path / "registry" / "models" / "m" / "files" / "not-an-upload" / "x").write_text("x")
    removed = reg.gc("m", min_age_s=3600)
    assert removed == [stale.relative_to(tmp_path / "registry").as_posix()]
    assert not stale.exists() and fresh.exists()
    assert reg.pull("m", 1, tmp_path / "pulled").is_dir()


def test_gc_aborts_incomplete_multipart_uploads_on_s3(s3_uri, s3_server):
    reg = Registry(s3_uri)
    store = reg.store
    key = store._key("models/m/files/20200101T000000Z-000000000000/model.safetensors")
    upload_id = store.client._create_multipart_upload(store.bucket, key, {})
    pending = store.client._list_multipart_uploads(store.bucket, prefix=store.prefix).uploads
    assert [u.upload_id for u in pending] == [upload_id]
    # (moto reports every upload as initiated in 2010, so the age limit cannot be exercised here; the folder
    # test above checks that younger partial files are spared)
    assert reg.gc("m", min_age_s=0) == ["models/m/files/20200101T000000Z-000000000000/model.safetensors"]
    assert store.client._list_multipart_uploads(store.bucket, prefix=store.prefix).uploads == []
