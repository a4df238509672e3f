"""A local folder as an object store: atomic puts by temporary file + rename, create-if-absent by hard link."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from cafe.storage.base import AlreadyExists, ObjectStore, UnsafePath, _check_key, inside


# the modes of a plainly made file and folder (0644, 0755 under the usual umask 022), read once at import
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


class LocalStore(ObjectStore):
    """A folder as an object store (the embedded default, and DVC/CI workspaces)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        """The file of ``key``; refused if it resolves outside the root (a symlink planted in the store)."""
        return inside(self.root, _check_key(key), f"{self.uri}: object key")

    def _write_atomic(self, key: str, write) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would make reports and weights unreadable to others
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
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would make reports and weights unreadable to others
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
        return sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith(".") and self._ok(k))

    def _ok(self, key: str) -> bool:
        """Listed keys are only those a get would serve (no symlinks out of the store, no odd names)."""
        try:
            self._path(key)
        except UnsafePath:
            return False
        return True

    def remove_partial(self, prefix: str, min_age_s: float) -> list[str]:
        """The ``.<name>.<random>.tmp`` files of puts that were killed before their rename."""
        base = self.root / prefix if prefix else self.root
        if not base.is_dir() or not base.resolve().is_relative_to(self.root):
            return []
        cutoff = time.time() - min_age_s
        removed = []
        for path in sorted(base.rglob(".*.tmp")):
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime <= cutoff:
                path.unlink(missing_ok=True)
                removed.append(path.relative_to(self.root).as_posix())
        return removed

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
