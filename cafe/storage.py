"""Object storage behind one small interface: a local folder (the embedded default) or S3/MinIO.

Every stage that writes something another stage or another machine reads (checkpoints, registered models,
traffic logs, monitor reports) goes through :func:`open_store`, so the same code runs against a folder on a
workstation and against MinIO on a cluster. Keys are ``/``-separated relative paths.

Writes are all-or-nothing: a local put writes a temporary file and renames it; an S3 put is one object
(multipart uploads become visible only when completed). ``put_if_absent`` is the one conditional write the
registry's index needs: it fails with :class:`AlreadyExists` instead of overwriting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse


class AlreadyExists(Exception):
    """``put_if_absent`` found the key already written."""


class StoreError(OSError):
    """The store could not be reached or refused a request; the message names the object and what to do."""


class ObjectStore(ABC):
    """Keys to bytes, with listing by prefix and one conditional write."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> None:
        """Write ``key`` only if it does not exist; raise :class:`AlreadyExists` otherwise (atomically)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` naming the key if absent."""

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def put_dir(self, prefix: str, directory: str | Path) -> list[str]:
        """Upload every file under ``directory`` to ``prefix/<relative path>``; returns the keys written."""
        directory = Path(directory)
        keys = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            key = join(prefix, path.relative_to(directory).as_posix())
            self.put_file(key, path)
            keys.append(key)
        return keys

    def get_dir(self, prefix: str, directory: str | Path) -> list[Path]:
        """Download every key under ``prefix/`` into ``directory``, keeping relative paths."""
        directory = Path(directory)
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""  # "": the whole store
        out = []
        for key in self.list(prefix):
            target = directory / key[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.get_file(key, target)
            out.append(target)
        return out

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix.rstrip("/") + "/"):
            self.delete(key)


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}: use a relative path without '.', '..' or empty parts")
    return key


class LocalStore(ObjectStore):
    """A folder as an object store (the embedded default, and DVC/CI workspaces)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _write_atomic(self, key: str, write) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: str | Path) -> None:
        def copy(fh):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)
        self._write_atomic(key, copy)

    def put_if_absent(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, target)  # atomic create-if-absent, and the content is whole when it appears
        except FileExistsError:
            raise AlreadyExists(key) from None
        finally:
            os.unlink(tmp)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri}: no object {key!r}")
        return path.read_bytes()

    def get_file(self, key: str, path: str | Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise FileNotFoundError(f"{self.uri}: no object {key!r}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith("."))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def open_store(uri: str | Path) -> ObjectStore:
    """``s3://bucket/prefix`` -> S3/MinIO (endpoint and credentials from the environment, see
    ``cafe.storage_s3``); anything else (a path or ``file://``) -> a local folder."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        from cafe.storage_s3 import S3Store

        return S3Store.from_uri(text)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"unsupported store URI {text!r}: use a local path, file://... or s3://bucket/prefix")
    return LocalStore(text)


def store_uri(uri: str) -> str:
    """A KFP artifact URI as an :func:`open_store` URI (KFP writes MinIO as ``minio://``)."""
    return "s3://" + uri.removeprefix("minio://") if uri.startswith("minio://") else uri


def localize(uri: str | Path, dest: str | Path) -> Path:
    """A local folder holding what ``uri`` names: the folder itself if local, else its objects downloaded into
    ``dest`` (a base model or data in MinIO/S3, for libraries that read only files)."""
    uri = str(uri)
    if not uri.startswith(("s3://", "minio://")):
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            raise FileNotFoundError(f"{uri}: no such folder; pass a local path or an s3:// URI")
        return path.resolve()
    files = open_store(store_uri(uri)).get_dir("", dest)
    if not files:
        raise FileNotFoundError(f"{uri}: nothing stored under this prefix")
    return Path(dest).resolve()
