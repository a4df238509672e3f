"""Object storage behind one small interface: a local folder (the embedded default) or S3/MinIO.

Every stage that writes something another stage or another machine reads (checkpoints, registered models,
traffic logs, monitor reports) goes through :func:`open_store`, so the same code runs against a folder on a
workstation and against MinIO on a cluster. Keys are ``/``-separated relative paths.

Writes are all-or-nothing: a local put writes a temporary file and renames it; an S3 put is one object
(multipart uploads become visible only when completed). ``put_if_absent`` is the one conditional write the
registry's index needs: it fails with :class:`AlreadyExists` instead of overwriting.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from cafe.storage.base import AlreadyExists, ObjectStore, StoreError, join
from cafe.storage.local import LocalStore

__all__ = ["AlreadyExists", "LocalStore", "ObjectStore", "StoreError", "join", "localize", "open_store",
           "store_uri"]


def open_store(uri: str | Path) -> ObjectStore:
    """``s3://bucket/prefix`` -> S3/MinIO (endpoint and credentials from the environment, see
    ``cafe.storage.s3``); anything else (a path or ``file://``) -> a local folder."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        from cafe.storage.s3 import S3Store

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
