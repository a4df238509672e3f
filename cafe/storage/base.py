"""The object-store interface and its errors, shared by the local and S3 back ends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


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
