"""Parquet shards of repurposed pairs: writing them deterministically and their content hash (the data
version); :mod:`cafe.data.pairs` reads them back for training.

Layout of the repurpose stage's output folder::

    train/part-00000.parquet ...   rows: id, source, kind, short_caption, long_caption, image (bytes), ...
    val/part-00000.parquet ...
    data_version.json              {"sha256": ..., "files": {relpath: {"sha256", "rows"}}, "rows": {...}}

Parquet rather than WebDataset tar: training needs random access by index (the global batch sampler picks
indices; resuming jumps to a step), and a Parquet footer gives every row group's offset, so one row group
is read per access, from a local disk or an object store alike; columns are typed and text is compressed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

DATA_VERSION = "data_version.json"
SPLITS = ("train", "val")
SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("kind", pa.string()),
    ("short_caption", pa.string()), ("long_caption", pa.string()),
    ("image", pa.binary()), ("image_sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
])


class ShardWriter:
    """Rows in order into ``part-NNNNN.parquet`` files of at most ``rows_per_shard`` rows and about
    ``max_bytes`` of images, ``row_group_rows`` rows per row group. Same rows in, same bytes out."""

    def __init__(self, folder: str | Path, rows_per_shard: int, max_bytes: int, row_group_rows: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard, self.max_bytes, self.row_group_rows = rows_per_shard, max_bytes, row_group_rows
        self.shards = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows: list[dict] = []
        self._shard_rows = self._shard_bytes = 0

    def add(self, row: dict) -> None:
        self._rows.append(row)
        self._shard_rows += 1
        self._shard_bytes += len(row["image"])
        if len(self._rows) >= self.row_group_rows:
            self._flush()
        if self._shard_rows >= self.rows_per_shard or self._shard_bytes >= self.max_bytes:
            self._close_shard()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.folder / f"part-{self.shards:05d}.parquet", SCHEMA,
                                            compression="zstd", write_statistics=["id"])
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA), row_group_size=len(self._rows))
        self._rows = []

    def _close_shard(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.shards += 1
        self._shard_rows = self._shard_bytes = 0

    def close(self) -> int:
        self._close_shard()
        return self.shards


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_data_version(folder: str | Path) -> dict:
    """Hash every shard and write ``data_version.json``: one sha256 over the (path, file hash) list, the
    version every later stage and the registry record."""
    folder = Path(folder)
    files, rows = {}, {}
    for split in SPLITS:
        rows[split] = 0
        for path in sorted((folder / split).glob("*.parquet")):
            n = pq.ParquetFile(path).metadata.num_rows
            files[f"{split}/{path.name}"] = {"sha256": _sha256(path), "rows": n}
            rows[split] += n
    listing = "".join(f"{name}\t{info['sha256']}\n" for name, info in sorted(files.items()))
    version = {"sha256": hashlib.sha256(listing.encode()).hexdigest(), "rows": rows, "files": files}
    (folder / DATA_VERSION).write_text(json.dumps(version, indent=1) + "\n")
    return version


def filesystem(folder: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local folder or an ``s3://`` URI."""
    if not folder.startswith("s3://"):
        return pafs.LocalFileSystem(), os.path.abspath(folder)
    from cafe.storage.s3 import endpoint_from_env

    host, secure = endpoint_from_env()
    fs = pafs.S3FileSystem(access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                           secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                           region=os.environ.get("AWS_REGION", "us-east-1"), endpoint_override=host,
                           scheme="https" if secure else "http")
    return fs, folder.removeprefix("s3://").rstrip("/")


def read_data_version(folder: str | Path) -> str:
    """The shards' content hash from ``data_version.json`` in ``folder`` (a local folder, that file itself,
    or an ``s3://`` URI of the folder)."""
    folder = str(folder)
    if not folder.startswith("s3://") and Path(folder).is_file():
        folder, name = str(Path(folder).parent), Path(folder).name
    else:
        name = DATA_VERSION
    fs, root = filesystem(folder)
    where = f"{folder.rstrip('/')}/{name}"
    try:
        with fs.open_input_stream(f"{root}/{name}") as fh:
            return str(json.loads(fh.read())["sha256"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{where} is missing: run `cafe repurpose` (it is written only when the stage "
                                "succeeds)") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{where}: expected a JSON object with a 'sha256' field") from None
