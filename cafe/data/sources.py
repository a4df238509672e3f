"""Reading a data mixture: LLaVA-OneVision records from JSON, JSON lines and Parquet, streamed.

Every record read becomes exactly one :class:`Item` (work for the image/caption rules) or one
:class:`Rejected` (malformed JSON, a missing or wrong-typed field), named by file and line, array index or
Parquet row; a bad record never stops the rest of its file. A file that cannot be opened at all raises
:class:`InputError`. JSON arrays are parsed element by element and Parquet files row group by row group,
so memory does not grow with the file.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cafe.config import RepurposeConfig, SourceConfig

_CHUNK = 1 << 20


class InputError(RuntimeError):
    """The input cannot be read at all (a missing file, not JSON/Parquet, a bad mixture file)."""


@dataclass(frozen=True)
class Item:
    """A well-formed record, waiting for the caption and image rules."""

    source: str
    location: str
    id: str
    answer: str | None  # the first gpt turn's value; None: the record has none
    image_path: str | None  # relative to image_root
    image_bytes: bytes | None  # Parquet: the image itself
    image_root: str
    kind: str | None


@dataclass(frozen=True)
class Rejected:
    source: str
    location: str
    reason: str
    message: str
    id: str | None = None

    def to_json(self) -> dict:
        return {"source": self.source, "location": self.location, "id": self.id, "reason": self.reason,
                "message": self.message}


Record = Union[Item, Rejected]


class _Mixture(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SourceConfig]


def load_sources(cfg: RepurposeConfig) -> list[SourceConfig]:
    """The mixture file's sources (image roots relative to the file), or the single source of ``cfg``."""
    if not cfg.mixture:
        return [SourceConfig(name=Path(cfg.input).stem, paths=[cfg.input], image_root=cfg.image_root,
                             keep_kinds=cfg.keep_kinds)]
    path = Path(cfg.mixture)
    try:
        raw = yaml.safe_load(path.read_text())
        mixture = _Mixture.model_validate(raw)
    except OSError as err:
        raise InputError(f"mixture {path}: {err.strerror}") from None
    except (yaml.YAMLError, ValidationError) as err:
        raise InputError(f"mixture {path}: not a list of sources ({err})") from None
    names = [s.name for s in mixture.sources]
    if len(set(names)) != len(names):
        raise InputError(f"mixture {path}: source names must be unique, got {names}")

    def rel(p: str) -> str:
        return p if not p or Path(p).is_absolute() else str(path.parent / p)

    return [s.model_copy(update={"paths": [rel(p) for p in s.paths], "image_root": rel(s.image_root)})
            for s in mixture.sources]


def source_files(source: SourceConfig) -> list[Path]:
    files: list[Path] = []
    for pattern in source.paths:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise InputError(f"source {source.name!r}: no file matches {pattern!r}")
        files += [Path(m) for m in matched]
    for f in files:
        if not f.is_file():
            raise InputError(f"source {source.name!r}: {f} does not exist or is not a file")
    return files


# ------------------------------------------------------------------ record structure
def _first_answer(conversations: list) -> str | None:
    for turn in conversations:
        if turn["from"] in ("gpt", "assistant"):
            return turn["value"]
    return None


def to_record(source: SourceConfig, location: str, rec, image_bytes: bytes | None = None) -> Record:
    """Check the fields of one decoded record; the reason codes are ``not_an_object``, ``missing_field`` and
    ``wrong_type``."""

    def bad(reason: str, message: str) -> Rejected:
        rid = rec.get("id") if isinstance(rec, dict) and isinstance(rec.get("id"), (str, int)) else None
        return Rejected(source.name, location, reason, message, None if rid is None else str(rid))

    if not isinstance(rec, dict):
        return bad("not_an_object", f"expected a JSON object, got {type(rec).__name__}")
    for field in ("id", "conversations") + (() if image_bytes is not None else ("image",)):
        if rec.get(field) is None:
            return bad("missing_field", f"field {field!r} is missing")
    if not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool):
        return bad("wrong_type", f"field 'id' must be a string, got {type(rec['id']).__name__}")
    if image_bytes is None and not isinstance(rec["image"], str):
        return bad("wrong_type", f"field 'image' must be a path string, got {type(rec['image']).__name__}")
    turns = rec["conversations"]
    if not isinstance(turns, list) or not all(
            isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str) for t in turns):
        return bad("wrong_type", "field 'conversations' must be a list of {from: str, value: str}")
    kind = rec.get("kind")
    if kind is not None and not isinstance(kind, str):
        return bad("wrong_type", f"field 'kind' must be a string, got {type(kind).__name__}")
    return Item(source.name, location, str(rec["id"]), _first_answer(turns),
                None if image_bytes is not None else rec["image"], image_bytes, source.image_root, kind)


# ------------------------------------------------------------------ readers
def _json_lines(source: SourceConfig, path: Path) -> Iterator[Record]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            location = f"{path}:{number}"
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                yield Rejected(source.name, location, "bad_json", f"line {number}: {err}")
                continue
            yield to_record(source, location, rec)


def _json_array(source: SourceConfig, path: Path) -> Iterator[Record]:
    """Elements of a top-level JSON array, decoded one at a time from a sliding buffer."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8", errors="replace") as fh:
        buf, pos, eof = "", 0, False

        def fill() -> bool:
            nonlocal buf, pos, eof
            chunk = fh.read(_CHUNK)
            eof = not chunk
            buf, pos = buf[pos:] + chunk, 0
            return bool(chunk)

        def skip_ws() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill():
                    return buf[pos] if pos < len(buf) else ""

        if skip_ws() != "[":
            raise InputError(f"{path}: expected a JSON array of records (LLaVA-OneVision format)")
        pos += 1
        index = 0
        if skip_ws() == "]":
            return
        while True:
            location = f"{path}[{index}]"
            while True:
                try:
                    rec, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as err:
                    if eof or not fill():
                        yield Rejected(source.name, location, "bad_json",
                                       f"element {index}: {err.msg}; the rest of the array cannot be parsed")
                        return
                    continue
                if end == len(buf) and not eof:  # a value cut at the buffer's end: decode again with more
                    fill()
                    continue
                break
            pos = end
            yield to_record(source, location, rec)
            index += 1
            sep = skip_ws()
            if sep == ",":
                pos += 1
                skip_ws()
            elif sep == "]":
                return
            else:
                yield Rejected(source.name, f"{path}[{index}]", "bad_json",
                               f"expected ',' or ']' after element {index - 1}; the rest of the array cannot be parsed")
                return


def _image_bytes(value) -> bytes | None:
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, (bytes, bytearray)) else None


def _parquet(source: SourceConfig, path: Path) -> Iterator[Record]:
    """Rows of a Parquet file with the image bytes in an ``image`` column (binary, or a {bytes, path} struct
    as Hugging Face datasets write it), one row group in memory at a time."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a non-Parquet file
        raise InputError(f"{path}: not a readable Parquet file ({err})") from None
    row = 0
    for group in range(pf.num_row_groups):
        for rec in pf.read_row_group(group).to_pylist():
            location = f"{path}:row {row}"
            row += 1
            data = _image_bytes(rec.get("image"))
            if data is None and isinstance(rec.get("image"), dict) and rec["image"].get("path"):
                rec = {**rec, "image": rec["image"]["path"]}  # a path instead of bytes: look it up in image_root
            yield to_record(source, location, rec, image_bytes=data)


def read_source(source: SourceConfig) -> Iterator[Record]:
    for path in source_files(source):
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from _parquet(source, path)
        elif suffix in (".jsonl", ".ndjson"):
            yield from _json_lines(source, path)
        elif suffix == ".json":
            yield from _json_array(source, path)
        else:
            raise InputError(f"source {source.name!r}: {path} is not .json, .jsonl or .parquet")
