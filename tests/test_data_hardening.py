"""No single record stops `cafe repurpose`: damaged parts of files quarantine only the records they held,
encodings are handled per record, markers of every model family are stripped, truncated images refused,
an output overlapping an input is refused before anything is written, nothing temporary is left; and
property-based tests (hypothesis) over generated records and files: no exception escapes and
input = kept + duplicates + filtered + quarantined."""

from __future__ import annotations

import io
import json
import string
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cafe.config import RepurposeConfig
from cafe.data.captions import clean_answer, has_markers
from cafe.data.repurpose import REASONS, RepurposeError, repurpose


def _png(seed: int = 0, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _record(i: int, image: str = "a.png", answer: str | None = None, **extra) -> dict:
    return {"id": f"r{i}", "image": image, "kind": "brief",
            "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                              {"from": "gpt", "value": answer or f"A red square number {i}."}], **extra}


def _cfg(tmp_path: Path, input_path: Path, image_root: Path | str = "", **kw) -> RepurposeConfig:
    return RepurposeConfig(input=str(input_path), image_root=str(image_root), out=str(tmp_path / "out"),
                           workers=1, progress=False, max_quarantine_share=1.0, keep_kinds=[], **kw)


def _quarantine(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]


def _images(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"{i}.png").write_bytes(_png(i))


def _no_temporary(tmp_path: Path) -> None:
    assert not list(tmp_path.glob(".out*")), list(tmp_path.glob(".out*"))


# ----------------------------------------------------------------- damaged parts of files
def _parquet_with_a_corrupt_row_group(path: Path, groups: int = 3, rows: int = 4) -> None:
    table = pa.Table.from_pylist([{**_record(i), "image": _png(i)} for i in range(groups * rows)])
    pq.write_table(table, path, row_group_size=rows, compression="zstd")
    meta = pq.ParquetFile(path).metadata.row_group(1)
    data = bytearray(path.read_bytes())
    for c in range(meta.num_columns):  # scribble over every column chunk of row group 1
        col = meta.column(c)
        start = col.dictionary_page_offset or col.data_page_offset
        data[start:start + col.total_compressed_size] = b"\xde\xad" * (col.total_compressed_size // 2) + \
            b"\x00" * (col.total_compressed_size % 2)
    path.write_bytes(bytes(data))


def test_a_corrupt_parquet_row_group_quarantines_its_rows_and_keeps_the_rest(tmp_path):
    path = tmp_path / "data.parquet"
    _parquet_with_a_corrupt_row_group(path)
    stats = repurpose(_cfg(tmp_path, path))
    assert stats["input"] == 12 and stats["kept"] == 8 and stats["accounted"]
    q = _quarantine(tmp_path)
    assert [r["reason"] for r in q] == ["corrupt_row_group"] * 4
    assert [r["location"] for r in q] == [f"{path}:row {i}" for i in range(4, 8)]
    _no_temporary(tmp_path)


def test_broken_jsonl_lines_and_bad_encodings_quarantine_only_their_record(tmp_path):
    _images(tmp_path / "img", 1)
    lines = [json.dumps(_record(0, "0.png")).encode(),
             b'{"id": "broken", "image": ',                                   # cut
             json.dumps(_record(1, "0.png", "Un caf\u00e9 cr\u00e8me."), ensure_ascii=False).encode("latin-1"),  # latin-1 in a UTF-8 file
             b'{"id": "x", "image": "0.png", "conversations": [{"from": "gpt", "value": "\\ud800 lone"}]}',
             b"[" * 100_000,                                                   # nesting the parser cannot follow
             b'{"id": 1' + b"1" * 5000 + b', "image": "0.png", "conversations": []}',  # a number too long
             json.dumps(_record(2, "0.png", "A blue circle.")).encode()]
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = repurpose(_cfg(tmp_path, path, tmp_path / "img"))
    assert stats["input"] == 7 and stats["kept"] == 2 and stats["accounted"]
    reasons = {r["location"].rsplit(":", 1)[1]: r["reason"] for r in _quarantine(tmp_path)}
    assert reasons == {"2": "bad_json", "3": "bad_encoding", "4": "bad_encoding", "5": "bad_json", "6": "bad_json"}


def test_utf16_files_are_read_and_a_broken_array_element_is_skipped_to_the_next(tmp_path):
    _images(tmp_path / "img", 1)
    good = [json.dumps(_record(i, "0.png", f"A shape number {i}.")) for i in range(3)]
    text = "[" + good[0] + ', {"id": "cut", "image": }, ' + good[1] + ", " + good[2] + "]"
    path = tmp_path / "data.json"
    path.write_bytes(text.encode("utf-16"))
    stats = repurpose(_cfg(tmp_path, path, tmp_path / "img"))
    assert stats["kept"] == 3 and stats["quarantined"] == 1 and stats["accounted"]
    assert _quarantine(tmp_path)[0]["location"] == f"{path}[1]"


def test_a_read_error_mid_file_quarantines_the_rest_and_reads_the_next_file(tmp_path, monkeypatch):
    from cafe.data import sources

    _images(tmp_path / "img", 1)
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(_record(i, "0.png", f"{name} shape {i}.")) + "\n"
                                                        for i in range(3)))
    real = sources._json_lines

    def failing(source, path):
        for n, rec in enumerate(real(source, path)):
            if path.name == "a.jsonl" and n == 2:
                raise OSError(5, "Input/output error")
            yield rec

    monkeypatch.setattr(sources, "_json_lines", failing)
    stats = repurpose(_cfg(tmp_path, tmp_path / "*.jsonl", tmp_path / "img"))
    assert stats["kept"] == 5 and stats["quarantined_by_reason"] == {"unreadable_rest": 1} and stats["accounted"]
    assert _quarantine(tmp_path)[0]["location"] == str(tmp_path / "a.jsonl")


# ----------------------------------------------------------------- captions and images
def test_the_markers_of_every_family_and_common_chat_formats_are_stripped():
    from cafe.models import FAMILIES

    markers = set()
    for cls in FAMILIES.values():
        markers |= set(getattr(sys.modules[cls.__module__], "SPECIAL_TOKENS"))
    markers |= {"<|im_start|>", "<|im_end|>", "[INST]", "[/INST]", "<<SYS>>", "<image>", "<|vision_start|>",
                "<|image_pad|>", "<|begin_of_text|>", "<|eot_id|>", "<start_of_turn>", "<end_of_turn>",
                "<image_1>", "<img>", "</img>", "<IMG_CONTEXT>", "<|user|>", "<|assistant|>", "<video>"}
    assert len(markers) > 20
    for m in sorted(markers):
        cleaned = clean_answer(f"A red {m}cube{m} on{m.upper()} a mat.")
        assert not has_markers(cleaned) and m not in cleaned and "cube" in cleaned, (m, cleaned)
        assert clean_answer(m * 5) == "", m


def test_long_captions_truncated_images_and_odd_paths_are_quarantined(tmp_path):
    root = tmp_path / "img"
    _images(root, 1)
    (root / "cut.png").write_bytes(_png(3)[:-2])  # ends before IEND: Pillow would pad it
    records = [_record(0, "0.png", "word " * 2000), _record(1, "cut.png"), _record(2, "a\x00b.png"),
               _record(3, "x" * 5000 + ".png"), _record(4, "0.png", "<|im_start|>assistant\n<image>"),
               _record(5, "0.png", "A fine caption.")]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stats = repurpose(_cfg(tmp_path, path, root, max_caption_chars=1000))
    assert stats["kept"] == 1 and stats["accounted"]
    assert {r["id"]: r["reason"] for r in _quarantine(tmp_path)} == {
        "r0": "caption_too_long", "r1": "image_truncated", "r2": "image_path_escape", "r3": "image_path_escape",
        "r4": "empty_answer"}


def test_a_caption_of_a_million_newlines_or_markers_is_handled_in_linear_time(tmp_path):
    """The role-prefix pattern began with ``^\\s*``: every line start of a run of newlines scanned the rest of
    the run again, so one caption of 64 000 newlines took 128 s and one of 10^6 hours (the stage hung)."""
    import signal
    import time

    def too_slow(*_):
        raise TimeoutError("clean_answer is not linear: one caption would stop the stage")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(20)
    try:
        start = time.perf_counter()
        for text in ("A cat.\n" + "\n" * 1_000_000, "A cat." + " \n" * 500_000, "A cat." + "<image>\n" * 125_000):
            assert clean_answer(text) == "A cat."
        assert time.perf_counter() - start < 20
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    _images(tmp_path / "img", 1)
    records = [_record(0, "0.png", "A dog." + "\n" * 1_000_000), _record(1, "0.png", "word " * 200_000)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stats = repurpose(_cfg(tmp_path, path, tmp_path / "img"))
    assert stats["kept"] == 1 and stats["quarantined_by_reason"] == {"caption_too_long": 1} and stats["accounted"]


# ----------------------------------------------------------------- output folder
@pytest.mark.parametrize("where", ["equals_root", "inside_root", "contains_input", "equals_input"])
def test_an_output_overlapping_an_input_is_refused_before_anything_is_written(tmp_path, where):
    root = tmp_path / "data" / "img"
    _images(root, 1)
    path = tmp_path / "data" / "in.jsonl"
    path.write_text(json.dumps(_record(0, "0.png")) + "\n")
    out = {"equals_root": root, "inside_root": root / "pairs", "contains_input": tmp_path / "data",
           "equals_input": path}[where]
    before = sorted(p for p in tmp_path.rglob("*"))
    cfg = _cfg(tmp_path, path, root).model_copy(update={"out": str(out)})
    with pytest.raises(RepurposeError, match="repurpose.out"):
        repurpose(cfg)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_link_planted_under_the_temporary_name_is_removed_not_followed(tmp_path):
    _images(tmp_path / "img", 1)
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(_record(0, "0.png")) + "\n")
    (tmp_path / ".out.tmp").symlink_to(tmp_path / "img")  # was: FileExistsError, the stage stopped
    stats = repurpose(_cfg(tmp_path, path, tmp_path / "img"))
    assert stats["kept"] == 1 and (tmp_path / "img" / "0.png").is_file()
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["0.png"]
    _no_temporary(tmp_path)


def test_a_failing_run_leaves_nothing_temporary(tmp_path, monkeypatch):
    _images(tmp_path / "img", 1)
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(_record(i, "0.png", f"Shape {i}.")) + "\n" for i in range(5)))
    from cafe.data import shards

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(shards.ShardWriter, "close", boom)
    with pytest.raises(OSError, match="disk full"):
        repurpose(_cfg(tmp_path, path, tmp_path / "img"))
    _no_temporary(tmp_path)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- properties
text = st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
                | st.sampled_from(["<image>", "<|im_start|>", "[INST]", "\x00", "\ud800", "..", "/", "\n", "A cat."]),
                max_size=6).map("".join)
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | text,
                          lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
                          max_leaves=8)
turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "assistant", 3]), "value": text | json_value})
record = st.fixed_dictionaries(
    {"id": st.one_of(text, st.integers(), st.none(), st.booleans()),
     "image": st.one_of(st.sampled_from(["0.png", "1.png", "cut.png", "junk.png", "missing.png", "../0.png",
                                         "/etc/passwd", "link.png", "sub/../0.png", ""]), text, st.integers()),
     "conversations": st.one_of(st.lists(turn, max_size=3), json_value)},
    optional={"kind": st.one_of(st.just("brief"), text, st.integers())}) | json_value
line = st.one_of(record.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
                 st.binary(max_size=30), record.map(lambda r: json.dumps(r)[: len(json.dumps(r)) // 2].encode()))


def _world(root: Path) -> None:
    _images(root, 2)
    (root / "cut.png").write_bytes(_png(5)[:300])
    (root / "junk.png").write_bytes(b"\x89PNG not really")
    (root / "link.png").symlink_to("/etc/hostname")


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(line, max_size=12), fmt=st.sampled_from(["jsonl", "json", "json-utf16"]))
def test_property_any_records_are_accounted_for_and_nothing_escapes(tmp_path_factory, lines, fmt):
    tmp = tmp_path_factory.mktemp("prop")
    _world(tmp / "img")
    if fmt == "jsonl":
        path = tmp / "data.jsonl"
        path.write_bytes(b"\n".join(lines))
    else:
        path = tmp / "data.json"
        body = b"[" + b",".join(lines) + b"]"
        path.write_bytes(body.decode("utf-8", "replace").encode("utf-16") if fmt == "json-utf16" else body)
    try:
        stats = repurpose(_cfg(tmp, path, tmp / "img"))
    except RepurposeError as err:  # the only refusal: a top level that is not an array
        assert fmt != "jsonl" and "expected a JSON array" in str(err), err
        _no_temporary(tmp)
        return
    assert stats["accounted"], stats["identity"]
    assert set(stats["quarantined_by_reason"]) <= set(REASONS)
    _no_temporary(tmp)


parquet_row = st.fixed_dictionaries({
    "id": st.one_of(text, st.none()), "image": st.one_of(st.binary(max_size=40), st.sampled_from([_png(1), _png(2)[:200]])),
    "conversations": st.lists(st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt"]), "value": text}), max_size=2)})


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(parquet_row, min_size=1, max_size=10), scribble=st.lists(st.integers(0, 10**6), max_size=6),
       group=st.integers(1, 4))
def test_property_damaged_parquet_files_are_accounted_for(tmp_path_factory, rows, scribble, group):
    tmp = tmp_path_factory.mktemp("pq")
    path = tmp / "data.parquet"
    clean = [{**r, "id": None if r["id"] is None else r["id"].encode("utf-8", "replace").decode("utf-8")}
             for r in rows]
    for r in clean:
        r["conversations"] = [{**t, "value": t["value"].encode("utf-8", "replace").decode("utf-8")}
                              for t in r["conversations"]]
    pq.write_table(pa.Table.from_pylist(clean), path, row_group_size=group)
    data = bytearray(path.read_bytes())
    body = len(data) - 8 - int.from_bytes(data[-8:-4], "little")  # leave the footer: the file still opens
    for offset in scribble:
        if body > 4:
            data[4 + offset % (body - 4)] ^= 0xFF
    path.write_bytes(bytes(data))
    stats = repurpose(_cfg(tmp, path))
    assert stats["accounted"] and stats["input"] == len(rows), stats
    _no_temporary(tmp)


def test_reason_codes_are_documented():
    assert {"bad_encoding", "corrupt_row_group", "unexpected", "caption_too_long"} <= set(REASONS)
    assert all(set(code) <= set(string.ascii_lowercase + "_") for code in REASONS)


# ----------------------------------------------------------------- token limit at training
def test_captions_over_the_token_limit_are_cut_and_counted_in_the_train_log(params, tmp_path):
    from cafe.distributed import DistEnv
    from cafe.training.trainer import Trainer
    from tests.conftest import make_adapter
    from tests.multiproc import train_pairs

    params.model.max_text_tokens = 4
    adapter = make_adapter(params)
    adapter.model_cfg = params.model
    long = "a red square on a blue circle near a green triangle"
    cut = adapter.truncate([long, "a cube"])
    assert cut[1] == "a cube" and long.startswith(cut[0]) and cut[0] != long
    assert len(adapter.tokenizer(cut[0], add_special_tokens=False)["input_ids"]) == 4
    assert adapter.truncated_texts == 1

    t = params.train
    t.output, t.max_steps, t.batch_size, t.save_every = str(tmp_path / "run"), 2, 8, 0
    Trainer(t, params, DistEnv(), progress=False).fit(train_pairs(params), lambda: make_adapter(params))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["truncated_texts"] > 0 for r in log), log
