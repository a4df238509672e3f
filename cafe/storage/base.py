"""The object-store interface and its errors, shared by the local and S3 back ends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class AlreadyExists(Exception):
    """``put_if_absent`` found the key already written."""


class StoreError(OSError):
    """The store could not be reached or refused a request; the message names the object and what to do."""


class UnsafePath(ValueError):
    """A name from a record, a store listing or a request would leave its destination folder."""


def safe_relpath(name: str, what: str = "name") -> str:
    """``name`` as a normalised ``/``-separated relative path that cannot leave the folder it is joined to:
    no absolute path, drive, ``..``, ``.``, empty part, backslash or control character."""
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"invalid {what} {name!r}: expected a non-empty relative path")
    if any(ord(c) < 32 or c == "\x7f" for c in name) or "\\" in name:
        raise UnsafePath(f"invalid {what} {name!r}: control characters and backslashes are not allowed in a path")
    parts = name.split("/")
    if name.startswith("/") or (len(parts[0]) == 2 and parts[0][1] == ":") or \
            any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(f"invalid {what} {name!r}: use a relative path without '.', '..', empty parts or a leading '/'")
    return name


def inside(root: str | Path, name: str, what: str = "name") -> Path:
    """``root / name``, refused unless it stays inside ``root`` after normalisation and symlink resolution
    (a symlink already in ``root`` that points elsewhere is refused too)."""
    root = Path(root)
    target = root / safe_relpath(name, what)
    real_root = root.resolve()
    if not target.resolve().is_relative_to(real_root):
        raise UnsafePath(f"invalid {what} {name!r}: resolves to {target.resolve()}, outside {real_root} (a symlink?)")
    return target


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
            rel = path.relative_to(directory).as_posix()
            inside(directory, rel, f"file under {directory}")  # a symlink out of the folder is not uploaded
            key = join(prefix, rel)
            self.put_file(key, path)
            keys.append(key)
        return keys

    def get_dir(self, prefix: str, directory: str | Path) -> list[Path]:
        """Download every key under ``prefix/`` into ``directory``, keeping relative paths."""
        directory = Path(directory)
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""  # "": the whole store
        out = []
        for key in self.list(prefix):
            target = inside(directory, key[len(prefix):], f"{self.uri}: listed key")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.get_file(key, target)
            out.append(target)
        return out

    def remove_partial(self, prefix: str, min_age_s: float) -> list[str]:
        """Remove what writers killed mid-write left under ``prefix`` (older than ``min_age_s``, so writes in
        progress are spared): temporary files of a folder, incomplete multipart uploads on S3. Returns them."""
        return []

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix.rstrip("/") + "/"):
            self.delete(key)


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _check_key(key: str) -> str:
    return safe_relpath(key, "object key")
