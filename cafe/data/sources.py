"""Reading a data mixture: LLaVA-OneVision records from JSON, JSON lines and Parquet, streamed.

Every record read becomes exactly one :class:`Item` (work for the image/caption rules) or one
:class:`Rejected` (malformed JSON, a missing or wrong-typed field, text that is not valid in the file's
encoding), named by file and line, array index or Parquet row; a bad record never stops the rest of its
file: a broken array element is skipped to the next element, a Parquet row group that cannot be read
quarantines each of its rows (with their row numbers) and the next row group is read. A file that cannot be
opened at all raises :class:`InputError`. JSON arrays are parsed element by element and Parquet files row
group by row group, so memory does not grow with the file.

Encodings are decided per file (a UTF-8, UTF-16 or UTF-32 byte-order mark; else UTF-8) and checked per
record: bytes that do not decode, and lone surrogates from JSON escapes, quarantine that record only
(``bad_encoding``), never the file, and are never kept as replacement characters.
"""

from __future__ import annotations

import codecs
import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cafe.config import RepurposeConfig, SourceConfig

_CHUNK = 1 << 20
_SURROGATE = re.compile("[\ud800-\udfff]")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


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
    """Check the fields of one decoded record; the reason codes are ``not_an_object``, ``missing_field``,
    ``wrong_type``, ``bad_encoding``, and ``unexpected`` (naming the exception) for anything unforeseen."""
    try:
        return _to_record(source, location, rec, image_bytes)
    except Exception as err:  # noqa: BLE001 - one record's surprise must not stop the stage
        return Rejected(source.name, location, "unexpected", f"{type(err).__name__}: {str(err)[:200]}")


def _text_ok(value) -> bool:
    return not isinstance(value, str) or not _SURROGATE.search(value)


def _to_record(source: SourceConfig, location: str, rec, image_bytes: bytes | None) -> Record:

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
    answer = _first_answer(turns)
    for field, value in (("id", rec["id"]), ("image", rec.get("image")), ("kind", kind), ("answer", answer)):
        if not _text_ok(value):
            return Rejected(source.name, location, "bad_encoding", f"field {field!r} holds bytes that are not "
                            "valid text in the file's encoding (or a lone surrogate escape)")
    return Item(source.name, location, str(rec["id"]), answer,
                None if image_bytes is not None else rec["image"], image_bytes, source.image_root, kind)


# ------------------------------------------------------------------ readers
def encoding_of(path: Path) -> str:
    """The text encoding of a JSON file: from its byte-order mark, else UTF-8."""
    with path.open("rb") as fh:
        head = fh.read(4)
    return next((name for bom, name in _BOMS if head.startswith(bom)), "utf-8")


def _open_text(path: Path):
    """The file as text; bytes that do not decode become lone surrogates, found and refused per record."""
    return path.open(encoding=encoding_of(path), errors="surrogateescape", newline="\n")


def _loads(text: str):
    """``json.loads`` that reports every failure as ``ValueError`` (deep nesting, oversized numbers)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _json_lines(source: SourceConfig, path: Path) -> Iterator[Record]:
    with _open_text(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            location = f"{path}:{number}"
            if _SURROGATE.search(line):
                yield Rejected(source.name, location, "bad_encoding",
                               f"line {number}: bytes that are not valid {encoding_of(path)}")
                continue
            try:
                rec = _loads(line)
            except ValueError as err:  # JSONDecodeError, too deep, a number too long to convert
                yield Rejected(source.name, location, "bad_json", f"line {number}: {err}")
                continue
            yield to_record(source, location, rec)


_NEXT_OBJECT = re.compile(r",\s*\{")


def _json_array(source: SourceConfig, path: Path) -> Iterator[Record]:
    """Elements of a top-level JSON array, decoded one at a time from a sliding buffer. An element that does
    not parse is skipped to the next ``, {`` (one ``bad_json`` record for the skipped text) and parsing goes on."""
    decoder = json.JSONDecoder()
    with _open_text(path) as fh:
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

        def resync() -> bool:
            """Move to the next element that starts an object; False at the end of the file."""
            nonlocal pos
            while True:
                m = _NEXT_OBJECT.search(buf, pos + 1)
                if m:
                    pos = m.end() - 1
                    return True
                if eof or not fill():
                    return False

        if skip_ws() != "[":
            raise InputError(f"{path}: expected a JSON array of records (LLaVA-OneVision format)")
        pos += 1
        index = 0
        if skip_ws() == "]":
            return
        while True:
            location = f"{path}[{index}]"
            error = None
            while True:
                try:
                    rec, end = decoder.raw_decode(buf, pos)
                except (ValueError, RecursionError) as err:
                    if isinstance(err, json.JSONDecodeError) and not eof and fill():
                        continue
                    error = getattr(err, "msg", None) or str(err) or type(err).__name__
                    break
                if end == len(buf) and not eof:  # a value cut at the buffer's end: decode again with more
                    fill()
                    continue
                break
            if error is not None:
                yield Rejected(source.name, location, "bad_json", f"element {index}: {error}; skipped to the next "
                                                                  "element")
                index += 1
                if not resync():
                    return
                continue
            pos = end
            if isinstance(rec, str) and _SURROGATE.search(rec):
                yield Rejected(source.name, location, "bad_encoding", f"element {index}: not valid text")
            else:
                yield to_record(source, location, rec)
            index += 1
            sep = skip_ws()
            if sep == ",":
                pos += 1
                skip_ws()
            elif sep == "]":
                pos += 1
                if skip_ws() == "":
                    return
                yield Rejected(source.name, f"{path}[{index}]", "bad_json",
                               f"text after what looked like the end of the array (after element {index - 1})")
                index += 1
                if not resync():
                    return
            else:
                yield Rejected(source.name, f"{path}[{index}]", "bad_json",
                               f"expected ',' or ']' after element {index - 1}; skipped to the next element")
                index += 1
                if not resync():
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
        n = pf.metadata.row_group(group).num_rows
        try:
            rows = _rows(pf.read_row_group(group))
        except Exception as err:  # noqa: BLE001 - a damaged row group: its rows are quarantined, the rest read
            for i in range(row, row + n):
                yield Rejected(source.name, f"{path}:row {i}", "corrupt_row_group",
                               f"row group {group} (rows {row}-{row + n - 1}) cannot be read: "
                               f"{type(err).__name__}: {str(err)[:200]}")
            row += n
            continue
        for rec in rows:
            location = f"{path}:row {row}"
            row += 1
            if isinstance(rec, Exception):
                yield Rejected(source.name, location, "corrupt_row", f"{type(rec).__name__}: {str(rec)[:200]}")
                continue
            data = _image_bytes(rec.get("image"))
            if data is None and isinstance(rec.get("image"), dict) and rec["image"].get("path"):
                rec = {**rec, "image": rec["image"]["path"]}  # a path instead of bytes: look it up in image_root
            yield to_record(source, location, rec, image_bytes=data)


def _rows(table) -> list:
    """A row group's rows as dicts; if the group does not convert as a whole, row by row (an exception in
    place of each row that does not)."""
    try:
        return table.to_pylist()
    except Exception:  # noqa: BLE001 - find the rows that fail
        out = []
        for i in range(table.num_rows):
            try:
                out.append(table.slice(i, 1).to_pylist()[0])
            except Exception as err:  # noqa: BLE001
                out.append(err)
        return out


def read_source(source: SourceConfig, on_error=None) -> Iterator[Record]:
    """Every record of every file of ``source``. ``on_error(source name, path, exception)`` turns a read
    error in the middle of a file (an I/O error, anything unforeseen) into one last record for that file, and
    the next file is read; without it the error propagates."""
    for path in source_files(source):
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            reader = _parquet
        elif suffix in (".jsonl", ".ndjson"):
            reader = _json_lines
        elif suffix == ".json":
            reader = _json_array
        else:
            raise InputError(f"source {source.name!r}: {path} is not .json, .jsonl or .parquet")
        try:
            yield from reader(source, path)
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - handed to on_error, which quarantines the rest
            if on_error is None:
                raise
            yield on_error(source.name, path, err)
