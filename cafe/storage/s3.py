"""S3 / MinIO object store through the ``minio`` SDK, opened by ``open_store("s3://bucket/prefix")``.

Endpoint and credentials come from the environment, as on a cluster where a Kubernetes Secret fills them in:
``CAFE_S3_ENDPOINT`` (or ``AWS_ENDPOINT_URL``; e.g. ``http://minio.cafe:9000``; default AWS S3),
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN`` and ``AWS_REGION``.

Every write is one object that appears whole: a single PUT, or a multipart upload that becomes visible
only when completed (the SDK aborts it on error; a killed process leaves only invisible parts).
``put_if_absent`` is a real conditional write: ``PUT`` with ``If-None-Match: *``, which S3 and MinIO
evaluate atomically and answer with ``412 Precondition Failed`` when the key exists.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.error import S3Error

from cafe.storage.base import AlreadyExists, ObjectStore, StoreError, _check_key, join

MiB = 1 << 20


def endpoint_from_env() -> tuple[str, bool]:
    """``(host[:port], secure)`` from ``CAFE_S3_ENDPOINT`` / ``AWS_ENDPOINT_URL`` (default AWS S3)."""
    url = os.environ.get("CAFE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
    parsed = urlparse(url if "://" in url else f"https://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StoreError(f"S3 endpoint {url!r} is not a URL like http://host:9000 (set CAFE_S3_ENDPOINT)")
    return parsed.netloc, parsed.scheme == "https"


class S3Store(ObjectStore):
    """Keys under ``s3://bucket/prefix`` on an S3-compatible server.

    ``part_size`` (at least 5 MiB, the S3 minimum) is where uploads switch to multipart.
    """

    def __init__(self, bucket: str, prefix: str = "", *, client: Minio | None = None, endpoint: str | None = None,
                 part_size: int = 16 * MiB):
        if not bucket:
            raise StoreError("an S3 store URI needs a bucket: s3://bucket/prefix")
        if part_size < 5 * MiB:
            raise ValueError(f"part_size={part_size}: S3 multipart parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        if client is None:
            host, secure = endpoint_from_env()
            client = Minio(host, access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                           secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                           session_token=os.environ.get("AWS_SESSION_TOKEN"),
                           region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                           secure=secure)
            endpoint = f"{'https' if secure else 'http'}://{host}"
        self.client = client
        self.endpoint = endpoint or "the configured endpoint"

    @classmethod
    def from_uri(cls, uri: str, **kwargs) -> S3Store:
        parsed = urlparse(uri)
        return cls(parsed.netloc, parsed.path, **kwargs)

    # ----------------------------------------------------------------- errors
    def _key(self, key: str) -> str:
        return join(self.prefix, _check_key(key))

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{join(self.prefix, key)}"

    def _error(self, err: Exception, key: str, action: str) -> Exception:
        """Translate an SDK/network error into one that names the object and what to do."""
        where = self._where(key) if key else self.uri
        if isinstance(err, S3Error):
            if err.code in ("NoSuchKey", "NoSuchObject"):
                return FileNotFoundError(f"{where}: no such object")
            if err.code == "NoSuchBucket":
                return StoreError(f"{action} {where}: bucket {self.bucket!r} does not exist at {self.endpoint}; "
                                  "create it (e.g. `mc mb`) or fix the store URI")
            if err.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StoreError(f"{action} {where}: {err.code} at {self.endpoint}; check AWS_ACCESS_KEY_ID / "
                                  "AWS_SECRET_ACCESS_KEY")
            return StoreError(f"{action} {where}: {err.code}: {err.message}")
        if isinstance(err, urllib3.exceptions.HTTPError):
            return StoreError(f"{action} {where}: cannot reach S3 endpoint {self.endpoint} ({err}); "
                              "set CAFE_S3_ENDPOINT (or AWS_ENDPOINT_URL)")
        return err

    def _call(self, action: str, key: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (S3Error, urllib3.exceptions.HTTPError) as err:
            raise self._error(err, key, action) from err

    # ----------------------------------------------------------------- writes
    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("writing", key, self.client.put_object, self.bucket, self._key(key), io.BytesIO(data), len(data),
                   part_size=self.part_size)

    def put_file(self, key: str, path: str | Path) -> None:
        self._call("uploading to", key, self.client.fput_object, self.bucket, self._key(key), str(path),
                   part_size=self.part_size)

    def put_if_absent(self, key: str, data: bytes) -> None:
        if len(data) > self.part_size:
            raise ValueError(f"put_if_absent {self._where(key)}: {len(data)} bytes; conditional writes are one PUT "
                             f"of at most part_size={self.part_size} bytes")
        # The public put_object turns unknown headers into x-amz-meta-*; the PUT itself must carry the condition.
        headers = {"If-None-Match": "*", "Content-Type": "application/octet-stream"}
        try:
            self.client._put_object(self.bucket, self._key(key), data, headers)
        except S3Error as err:
            if err.code == "PreconditionFailed" or getattr(err.response, "status", None) == 412:
                raise AlreadyExists(key) from None
            raise self._error(err, key, "conditionally writing") from err
        except urllib3.exceptions.HTTPError as err:
            raise self._error(err, key, "conditionally writing") from err

    def delete(self, key: str) -> None:
        self._call("deleting", key, self.client.remove_object, self.bucket, self._key(key))

    # ----------------------------------------------------------------- reads
    def get_bytes(self, key: str) -> bytes:
        response = self._call("reading", key, self.client.get_object, self.bucket, self._key(key))
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get_file(self, key: str, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # fget_object downloads to a temporary name and renames when complete
        self._call("downloading", key, self.client.fget_object, self.bucket, self._key(key), str(path))

    def exists(self, key: str) -> bool:
        try:
            self._call("checking", key, self.client.stat_object, self.bucket, self._key(key))
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""

        def names():  # the SDK lists lazily, so errors surface while iterating
            objects = self.client.list_objects(self.bucket, prefix=root + prefix, recursive=True)
            return [o.object_name[len(root):] for o in objects]

        return sorted(self._call("listing", prefix, names))
