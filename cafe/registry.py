"""Model registry on an object store: versions with lineage and checksums, and aliases with history.

Layout under the store (a local folder by default, MinIO/S3 on a cluster)::

    models/<name>/files/<upload id>/...        the model directory, model card, metrics, gate, params
    models/<name>/versions/<N>.json            version records: visible versions are exactly these
    models/<name>/aliases/<alias>/<N>.json     alias events (promote = push, rollback = pop), never rewritten
    models/<name>/claims/...                   claim markers of the numbered logs (see :class:`NumberedLog`)

A registration uploads every file under a fresh upload id first and writes its version record last, so a
version is visible only when complete; an upload that dies half way leaves unreferenced files (``gc``
removes them, and the temporary files of killed writes) and no version. Version numbers increase but may
skip a number under contention.

Aliases move by compare-and-swap on their log: an operation reads the log up to entry N, decides, and writes
entry N+1 with a conditional write (``put_if_absent``: ``If-None-Match: *`` on S3, an exclusive hard link on a
folder). If another operation wrote N+1 first, a promotion re-reads and tries again (so ``previous`` is always
the version it replaced) and a rollback is refused (it would undo a change its caller never saw).

Every record read back is schema-checked (:class:`VersionRecord`, :class:`AliasEvent`), and every file name in
a record stays inside the destination it is pulled into: a tampered record is refused, naming the field.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tqdm import tqdm

from cafe.contract import read_contract
from cafe.model_card import model_card
from cafe.storage import AlreadyExists, ObjectStore, UnsafePath, inside, join, open_store, safe_relpath
from cafe.storage.local import DIR_MODE

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
CARD = "README.md"  # the model card (cafe.model_card), as the Hugging Face hub expects it
RECORD_FILE = "registry_record.json"  # written next to a pulled model: which version it is
REINDEX_ALIASES = ("production",)  # promoting to these records that served gallery embeddings must be recomputed


class RegistryError(ValueError):
    """A registry request that cannot be satisfied (unknown model/version/alias, bad input)."""


class ChecksumMismatch(RegistryError):
    """A pulled file does not match the sha256 recorded when it was registered."""


UPLOAD_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{12}$")


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class VersionRecord(BaseModel):
    """A version record as read back from the store; anything else there is refused (it may be tampered)."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(pattern=NAME_RE.pattern)
    version: int = Field(ge=1)
    upload_id: str = Field(pattern=UPLOAD_RE.pattern)
    prefix: str
    files: dict[str, FileEntry]
    total_bytes: int = Field(ge=0)
    data_version: str
    metrics: dict
    gate: dict

    @field_validator("files")
    @classmethod
    def _relative_names(cls, files: dict) -> dict:
        for rel in files:
            safe_relpath(rel, "file name")
            if rel == RECORD_FILE:
                raise ValueError(f"file name {rel!r} is reserved")
        return files

    @model_validator(mode="after")
    def _prefix_is_the_upload(self):
        if self.prefix != f"models/{self.name}/files/{self.upload_id}":
            raise ValueError(f"prefix {self.prefix!r} is not models/{self.name}/files/{self.upload_id}")
        return self


class AliasEvent(BaseModel):
    """One alias log entry: ``promote`` (to ``version``, replacing ``previous``) or ``rollback`` (``from``)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)
    seq: int = Field(ge=1)
    action: Literal["promote", "rollback"]
    version: int | None = Field(default=None, ge=1)
    previous: int | None = None
    from_: int | None = Field(default=None, alias="from")

    @model_validator(mode="after")
    def _fields_of_the_action(self):
        if self.action == "promote" and self.version is None:
            raise ValueError("a promote event needs 'version'")
        return self


def _validated(model: type[BaseModel], data: Any, where: str) -> dict:
    try:
        return model.model_validate(data).model_dump(by_alias=True, exclude_unset=True)
    except (ValidationError, UnsafePath) as err:
        first = err.errors()[0] if isinstance(err, ValidationError) else {"loc": (), "msg": str(err)}
        field = ".".join(str(x) for x in first["loc"]) or "record"
        raise RegistryError(f"{where}: invalid record: {field}: {first['msg']}; the stored record was damaged or "
                            "tampered with, and is not used") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_name(kind: str, value: str) -> str:
    if not NAME_RE.match(value or ""):
        raise RegistryError(f"{kind} {value!r}: use lowercase letters, digits, '.', '_' or '-' (at most 64)")
    return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_code_version(cwd: str | Path | None = None) -> str:
    """``CAFE_CODE_VERSION`` if set (images without .git), else the git commit (``-dirty`` if modified)."""
    if os.environ.get("CAFE_CODE_VERSION"):
        return os.environ["CAFE_CODE_VERSION"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _json_input(value: Mapping | str | Path, what: str) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    path = Path(value)
    if not path.is_file():
        raise RegistryError(f"{what}: {path} is not a file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RegistryError(f"{what}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{what}: {path} must hold a JSON object")
    return data


def _params_text(params: Any, model_dir: Path) -> str | None:
    """The training config as YAML: a Params, a dict, a YAML path, or None (the model's own params.yaml)."""
    if params is None:
        own = model_dir / "params.yaml"
        return own.read_text() if own.is_file() else None
    if hasattr(params, "model_dump"):
        params = params.model_dump(mode="json")
    if isinstance(params, Mapping):
        return yaml.safe_dump(dict(params), sort_keys=False)
    path = Path(params)
    if not path.is_file():
        raise RegistryError(f"params: {path} is not a file")
    return path.read_text()


class NumberedLog:
    """Entries 1, 2, 3, ... as ``<prefix>/<N>.json``, appended safely by concurrent writers.

    Appending needs only read-after-write consistent put and list (S3 since 2020, MinIO, a local folder), not an
    atomic compare-and-swap: moto's S3 server, for one, checks ``If-None-Match`` and then writes without a lock,
    so two racing conditional PUTs can both succeed. A writer instead puts a unique claim marker under
    ``<claims>/<N>/`` and then lists that folder: it owns N only if its marker is the only one. Of two writers,
    the one that lists second always sees the other's marker, so two can never both own N; both may lose, and
    then each removes its marker and tries the next free number after a random pause. The owner writes the
    entry with ``put_if_absent``, which on S3/MinIO also refuses to overwrite atomically.
    """

    def __init__(self, store: ObjectStore, prefix: str, claims: str, attempts: int = 200,
                 parse: Callable[[Any, str], dict] | None = None):
        self.store, self.prefix, self.claims, self.attempts = store, prefix, claims, attempts
        self.parse = parse

    def _key(self, n: int) -> str:
        return join(self.prefix, f"{n:06d}.json")

    def numbers(self) -> list[int]:
        found = []
        for key in self.store.list(self.prefix + "/"):
            stem = key[len(self.prefix) + 1:].removesuffix(".json")
            if stem.isdigit() and "/" not in stem:
                found.append(int(stem))
        return sorted(found)

    def read(self, n: int) -> dict:
        """Entry ``n``, schema-checked by ``parse`` (a damaged entry raises :class:`RegistryError`)."""
        key = self._key(n)
        try:
            data = json.loads(self.store.get_bytes(key))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"{self.store.uri}/{key}: not valid JSON ({err}); the record is damaged") from None
        return self.parse(data, f"{self.store.uri}/{key}") if self.parse else data

    def entries(self) -> list[dict]:
        return [self.read(n) for n in self.numbers()]

    def _claimed(self, n: int) -> list[str]:
        return self.store.list(join(self.claims, str(n)) + "/")

    def append(self, make_entry: Callable[[int], dict]) -> dict:
        """Write ``make_entry(N)`` at the first number N nobody else owns; returns the entry."""
        token = uuid.uuid4().hex
        for attempt in range(self.attempts):
            n = (self.numbers() or [0])[-1] + 1
            while self._claimed(n):  # a writer owns it or is trying; it is not ours to take
                n += 1
            marker = join(self.claims, str(n), token)
            self.store.put_bytes(marker, b"")
            if self._claimed(n) == [marker]:
                entry = make_entry(n)
                try:
                    self.store.put_if_absent(self._key(n), json.dumps(entry, indent=1).encode())
                except AlreadyExists:  # only possible if claim markers were removed by hand
                    self.store.delete(marker)
                    continue
                return entry
            self.store.delete(marker)
            time.sleep(random.uniform(0, 0.02 * min(attempt + 1, 10)))
        raise RegistryError(f"{self.store.uri}/{self.prefix}: no free entry after {self.attempts} attempts")


class AliasLog(NumberedLog):
    """An alias's events; appended only by compare-and-swap (:meth:`swap`), never by claiming a free number."""

    def state(self) -> tuple[int, list[int]]:
        """``(head, stack)``: the number of the last event and the alias's versions, current last."""
        numbers = self.numbers()
        stack: list[int] = []
        for n in numbers:
            event = self.read(n)
            if event["action"] == "promote":
                stack.append(event["version"])
            elif event["action"] == "rollback" and len(stack) > 1:
                stack.pop()
        return (numbers[-1] if numbers else 0), stack

    def swap(self, head: int, entry: dict) -> bool:
        """Write ``entry`` as event ``head + 1`` if no event follows ``head`` yet (a conditional write); False
        when another operation wrote it first."""
        try:
            self.store.put_if_absent(self._key(head + 1), json.dumps({**entry, "seq": head + 1}, indent=1).encode())
        except AlreadyExists:
            return False
        return True


class Registry:
    """Registered model versions with lineage in an object store (see the module docstring for the layout)."""

    def __init__(self, store: ObjectStore | str | Path, progress: bool = False):
        self.store = store if isinstance(store, ObjectStore) else open_store(store)
        self.progress = progress

    # ----------------------------------------------------------------- layout
    def _root(self, name: str) -> str:
        return join("models", _check_name("model name", name))

    def _versions(self, name: str) -> NumberedLog:
        root = self._root(name)

        def parse(data: Any, where: str) -> dict:
            record = _validated(VersionRecord, data, where)
            if record["name"] != name or where.rpartition("/")[2] != f"{record['version']:06d}.json":
                raise RegistryError(f"{where}: invalid record: name/version {record['name']!r} v{record['version']} "
                                    "do not match where it is stored; the record was moved or tampered with")
            return record

        return NumberedLog(self.store, join(root, "versions"), join(root, "claims", "versions"), parse=parse)

    def _alias_log(self, name: str, alias: str) -> AliasLog:
        root = self._root(name)
        _check_name("alias", alias)
        if alias == "latest" or re.fullmatch(r"v?\d+", alias):
            raise RegistryError(f"alias {alias!r} would read as a version; pick a name like 'production'")
        return AliasLog(self.store, join(root, "aliases", alias), join(root, "claims", "aliases", alias),
                        parse=lambda data, where: _validated(AliasEvent, data, where))

    # ----------------------------------------------------------------- register
    def register(self, model_dir: str | Path, name: str, *, metrics: Mapping | str | Path,
                 gate: Mapping | str | Path, data_version: str, params: Any = None, parent: str | None = None,
                 extra_files: Mapping[str, str | Path] | None = None, code_version: str | None = None,
                 alias: str | None = None, allow_failed_gate: bool = False) -> dict:
        """Upload ``model_dir`` (weights, config, processor) plus model card, metrics, gate result and training
        config, then make it visible as the next version. Returns the version record."""
        model_dir = Path(model_dir)
        _check_name("model name", name)
        if not (model_dir / "config.json").is_file():
            raise RegistryError(f"{model_dir}: not a model directory (no config.json); pass the saved model")
        if not data_version or not str(data_version).strip():
            raise RegistryError("data_version is required: the content hash of the training shards "
                                "(data_version.json's sha256)")
        metrics, gate = _json_input(metrics, "metrics"), _json_input(gate, "gate")
        if "passed" not in gate:
            raise RegistryError("gate: expected the gate result {'passed': bool, 'checks': [...]}")
        if not gate["passed"] and not allow_failed_gate:
            failed = [c for c in gate.get("checks", []) if isinstance(c, dict) and not c.get("passed", True)]
            raise RegistryError(f"the gate did not pass ({len(failed)} failed checks: {failed[:3]}); "
                                "register anyway with allow_failed_gate / --allow-failed-gate")

        generated: dict[str, bytes] = {"metrics.json": json.dumps(metrics, indent=1).encode(),
                                       "gate.json": json.dumps(gate, indent=1).encode()}
        params_text = _params_text(params, model_dir)
        if params_text is not None:
            generated["params.yaml"] = params_text.encode()
        sources: dict[str, Path] = {p.relative_to(model_dir).as_posix(): p
                                    for p in sorted(model_dir.rglob("*")) if p.is_file()}
        for rel, path in (extra_files or {}).items():
            if not Path(path).is_file():
                raise RegistryError(f"extra file {rel!r}: {path} is not a file")
            sources[rel] = Path(path)
        for rel in (*generated, CARD, RECORD_FILE):
            sources.pop(rel, None)

        upload_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:12]}"
        prefix = join(self._root(name), "files", upload_id)
        files = {rel: {"sha256": sha256_file(p), "size": p.stat().st_size} for rel, p in sources.items()}
        files.update({rel: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for rel, b in generated.items()})
        record = {
            "name": name, "upload_id": upload_id, "prefix": prefix, "created_at": _now(),
            "created_by": f"{getpass.getuser()}@{socket.gethostname()}",
            "data_version": str(data_version).strip(),
            "code_version": code_version or git_code_version(),
            "parent": self._resolve_parent(parent),
            "params_sha256": files.get("params.yaml", {}).get("sha256"),
            "metrics": metrics, "gate": gate, "contract": read_contract(model_dir),
        }
        card = model_card({**record, "files": files, "total_bytes": sum(f["size"] for f in files.values())},
                          params_text).encode()
        generated[CARD] = card
        files[CARD] = {"sha256": hashlib.sha256(card).hexdigest(), "size": len(card)}
        record["files"] = dict(sorted(files.items()))
        record["total_bytes"] = sum(f["size"] for f in files.values())

        try:
            with tqdm(total=record["total_bytes"], unit="B", unit_scale=True, desc=f"register {name}",
                      disable=not self.progress) as bar:
                for rel, path in sources.items():
                    self.store.put_file(join(prefix, rel), path)
                    bar.update(files[rel]["size"])
                for rel, data in generated.items():
                    self.store.put_bytes(join(prefix, rel), data)
                    bar.update(len(data))
            committed = self._versions(name).append(lambda n: {**record, "version": n})
        except BaseException:
            self._remove_upload(name, upload_id, prefix)
            raise
        if alias:
            self._promote(name, committed["version"], alias, only_if_newer=True)
        return committed

    def _remove_upload(self, name: str, upload_id: str, prefix: str) -> None:
        """Best effort, and only if no version references the upload (an interrupt can land just after the
        version record was written); unreferenced files are invisible either way and ``gc`` finds them."""
        try:
            if all(r["upload_id"] != upload_id for r in self.list(name)):
                self.store.delete_prefix(prefix)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass

    def _resolve_parent(self, parent: str | None) -> str | None:
        """``name:ref`` of a registered model becomes ``name:vN``; anything else (a path, a hub id) is kept."""
        if not parent:
            return None
        model, sep, ref = parent.partition(":")
        if sep and NAME_RE.match(model):
            try:
                return f"{model}:v{self.resolve(model, ref)}"
            except RegistryError:
                pass
        return parent

    # ----------------------------------------------------------------- read
    def list(self, name: str) -> list[dict]:
        """Every visible version record of ``name``, oldest first."""
        return self._versions(name).entries()

    def names(self) -> list[str]:
        return sorted({key.split("/")[1] for key in self.store.list("models/")
                       if "/versions/" in key and NAME_RE.match(key.split("/")[1])})

    def aliases(self, name: str) -> dict[str, int]:
        """Current version of every alias of ``name``."""
        root = join(self._root(name), "aliases") + "/"
        names = sorted({key[len(root):].split("/")[0] for key in self.store.list(root)})
        current = {alias: self._alias_state(name, alias) for alias in names
                   if NAME_RE.match(alias) and alias != "latest" and not re.fullmatch(r"v?\d+", alias)}
        return {alias: stack[-1] for alias, stack in current.items() if stack}

    def alias_history(self, name: str, alias: str) -> list[dict]:
        return self._alias_log(name, alias).entries()

    def _alias_state(self, name: str, alias: str) -> list[int]:
        return self._alias_log(name, alias).state()[1]

    def resolve(self, name: str, ref: str | int = "latest") -> int:
        """A version number from ``3``, ``"v3"``, ``"latest"`` or an alias."""
        text = str(ref).strip()
        versions = self._versions(name).numbers()
        if not versions:
            raise RegistryError(f"model {name!r} has no registered versions in {self.store.uri}")
        if text == "latest":
            return versions[-1]
        if re.fullmatch(r"v?\d+", text):
            number = int(text.lstrip("v"))
            if number not in versions:
                raise RegistryError(f"{name}: no version {number}; registered: {versions}")
            return number
        stack = self._alias_state(name, _check_name("alias", text))
        if not stack:
            raise RegistryError(f"{name}: no version, 'latest' or alias {text!r}; aliases: "
                                f"{sorted(self.aliases(name))}")
        return stack[-1]

    def show(self, name: str, ref: str | int = "latest") -> dict:
        """The version record plus the aliases pointing at it."""
        record = self._versions(name).read(self.resolve(name, ref))
        record["aliases"] = sorted(a for a, v in self.aliases(name).items() if v == record["version"])
        return record

    # ----------------------------------------------------------------- aliases
    def promote(self, name: str, version: str | int, alias: str) -> dict:
        """Point ``alias`` (e.g. candidate, production) at ``version``; the previous target stays in history.
        Concurrent operations are serialised by the alias log's compare-and-swap: ``previous`` is the version
        this promotion replaced, whatever else ran at the same time."""
        return self._promote(name, self.resolve(name, version), alias)

    def _promote(self, name: str, number: int, alias: str, only_if_newer: bool = False,
                 attempts: int = 100) -> dict:
        log = self._alias_log(name, alias)
        for attempt in range(attempts):
            head, stack = log.state()
            previous = stack[-1] if stack else None
            if only_if_newer and previous is not None and previous >= number:
                return {"alias": alias, "version": previous, "previous": previous, "reindex_required": False,
                        "moved": False}
            # serving keeps gallery embeddings per version: a new production version makes them stale
            reindex = alias in REINDEX_ALIASES and previous != number
            if log.swap(head, {"action": "promote", "version": number, "at": _now(), "by": getpass.getuser(),
                               "previous": previous, "reindex_required": reindex}):
                return {"alias": alias, "version": number, "previous": previous, "reindex_required": reindex,
                        "moved": True}
            time.sleep(random.uniform(0, 0.01 * min(attempt + 1, 10)))
        raise RegistryError(f"{name}: alias {alias!r} kept changing; {attempts} promotions lost the race, try again")

    def rollback(self, name: str, alias: str, expected: int | None = None) -> dict:
        """Point ``alias`` back at the version it had before its current one. Refused if the alias is not at
        ``expected`` (when given) or if another operation moved it between reading and writing."""
        log = self._alias_log(name, alias)
        head, stack = log.state()
        if len(stack) < 2:
            raise RegistryError(f"{name}: alias {alias!r} has no earlier version to roll back to "
                                f"(history: {stack})")
        if expected is not None and stack[-1] != expected:
            raise RegistryError(f"{name}: alias {alias!r} is at v{stack[-1]}, not v{expected}; nothing rolled back")
        if not log.swap(head, {"action": "rollback", "from": stack[-1], "to": stack[-2], "at": _now(),
                               "by": getpass.getuser()}):
            now = log.state()[1]
            raise RegistryError(f"{name}: alias {alias!r} was moved by another operation while rolling back from "
                                f"v{stack[-1]} (it is now at v{now[-1] if now else None}); nothing rolled back, "
                                "run it again if still wanted")
        return {"alias": alias, "version": stack[-2], "from": stack[-1]}

    # ----------------------------------------------------------------- pull
    def pull(self, name: str, ref: str | int, dest: str | Path) -> Path:
        """Download a version into ``dest`` (absent or empty), verifying every file's sha256 first."""
        record = self.show(name, ref)
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise RegistryError(f"{dest} exists and is not empty; pull into a new directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.pull-"))
        staging.chmod(DIR_MODE)  # mkdtemp's 0700 would hide the pulled model from other users
        try:
            self._download(record, record["files"], staging)
            (staging / RECORD_FILE).write_text(json.dumps(record, indent=1))
            if dest.exists():
                dest.rmdir()
            staging.rename(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest

    def fetch(self, name: str, ref: str | int, files: list[str], dest: str | Path) -> tuple[dict, dict[str, Path]]:
        """Download only ``files`` of a version (those it has) into ``dest``, verified like ``pull``; returns
        the version record and the local path of each file found (e.g. a gate reading production's metrics)."""
        record = self.show(name, ref)
        wanted = {rel: record["files"][rel] for rel in files if rel in record["files"]}
        self._download(record, wanted, Path(dest))
        return record, {rel: inside(dest, rel, "file name") for rel in wanted}

    def _download(self, record: dict, files: Mapping[str, dict], dest: Path) -> None:
        with tqdm(total=sum(m["size"] for m in files.values()), unit="B", unit_scale=True,
                  desc=f"pull {record['name']} v{record['version']}", disable=not self.progress) as bar:
            for rel, meta in files.items():
                try:
                    target = inside(dest, rel, f"{record['name']} v{record['version']}: file name")
                except UnsafePath as err:
                    raise RegistryError(str(err)) from None
                self.store.get_file(join(record["prefix"], rel), target)
                actual = sha256_file(target)
                if actual != meta["sha256"]:
                    raise ChecksumMismatch(
                        f"{record['name']} v{record['version']}: {rel} has sha256 {actual}, registered "
                        f"{meta['sha256']}; the stored copy at {self.store.uri}/{record['prefix']} is corrupt or "
                        "was changed")
                bar.update(meta["size"])

    # ----------------------------------------------------------------- housekeeping
    def gc(self, name: str, min_age_s: float = 24 * 3600) -> list[str]:
        """Delete uploads no version references that are older than ``min_age_s`` (younger ones may be in
        progress), and the partial files of writes killed that long ago; returns what was removed (upload ids,
        then partial keys)."""
        referenced = {r["upload_id"] for r in self.list(name)}
        root = join(self._root(name), "files") + "/"
        uploads = sorted({key[len(root):].split("/")[0] for key in self.store.list(root)})
        now = datetime.now(timezone.utc)
        removed = []
        for upload in uploads:
            if not UPLOAD_RE.match(upload):
                continue  # not written by register: left for a person to look at
            started = datetime.strptime(upload.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            if upload not in referenced and (now - started).total_seconds() >= min_age_s:
                self.store.delete_prefix(root + upload)
                removed.append(upload)
        return removed + self.store.remove_partial(self._root(name) + "/", min_age_s)
