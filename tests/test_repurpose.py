"""`cafe repurpose` on real broken files: every rule, the accounting identity, determinism across worker
counts, the stable split, Parquet and JSON-array inputs, a mixture file, and the exit code."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cafe.config import RepurposeConfig, ShortCaptionConfig
from cafe.data import sources
from cafe.data.captions import clean_answer, short_caption
from cafe.data.pairs import ShardDataset
from cafe.data.repurpose import RepurposeError, repurpose
from cafe.data.shards import DATA_VERSION, read_data_version


# ------------------------------------------------------------------ real files
def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with no pixel data: a decompression bomb's header."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _broken_world(root: Path) -> dict[str, bytes]:
    """Image files of every kind the rules must handle, under ``root/images``; returns name -> bytes."""
    files = {
        "good.png": _encoded(_noise(32, 24, 1), "PNG"),
        "good2.jpg": _encoded(_noise(32, 32, 2), "JPEG", quality=90),
        "truncated.jpg": _encoded(_noise(64, 64, 3), "JPEG", quality=95)[:1500],
        "cmyk.jpg": _encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
        "grey16.png": _encoded(Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16)), "PNG"),
        "la.png": _encoded(Image.new("LA", (16, 16), (0, 0)), "PNG"),
        "corrupt.png": b"this is not an image at all" * 10,
        "bomb.png": _png_header_only(100_000, 100_000),
        "bomb_small_header.png": _png_header_only(9000, 9000),
        "tiny.png": _encoded(_noise(4, 4), "PNG"),
    }
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black (transparent), 1 blue
    palette.putpixel((0, 0), 0)
    files["palette_transparent.png"] = _encoded(palette, "PNG", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    files["rotated.jpg"] = _encoded(_noise(40, 20, 4), "JPEG", exif=exif)
    (root / "images").mkdir(parents=True)
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
    outside = root.parent / f"{root.name}-outside.png"
    outside.write_bytes(files["good.png"])
    os.symlink(outside, root / "images" / "escape_link.png")
    return files


def _rec(rid, image, answer, kind="brief", question="<image>\nDescribe the image briefly."):
    return {"id": rid, "image": image, "kind": kind,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def _write_jsonl(path: Path, lines: list) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def _cfg(tmp_path: Path, **kw) -> RepurposeConfig:
    base = dict(input=str(tmp_path / "records.jsonl"), image_root=str(tmp_path / "root"), keep_kinds=[],
                out=str(tmp_path / "pairs"), workers=1, progress=False, val_fraction=0.0, max_quarantine_share=1.0)
    return RepurposeConfig(**{**base, **kw})


BROKEN_LINES = [
    _rec("good", "images/good.png", "<image>\nA noisy square. It has many colours."),                      # 1
    _rec("jpg", "images/good2.jpg", "assistant: <|im_start|>A second noisy square.<|im_end|>"),            # 2
    _rec("truncated", "images/truncated.jpg", "A truncated photo."),                                       # 3
    _rec("cmyk", "images/cmyk.jpg", "A red square."),                                                      # 4
    _rec("grey16", "images/grey16.png", "A grey square."),                                                 # 5
    _rec("palette", "images/palette_transparent.png", "A blue square."),                                   # 6
    _rec("la", "images/la.png", "A transparent square."),                                                  # 7
    _rec("rotated", "images/rotated.jpg", "A rotated photo."),                                             # 8
    _rec("bomb", "images/bomb.png", "A bomb."),                                                            # 9
    _rec("bomb2", "images/bomb_small_header.png", "A smaller bomb."),                                      # 10
    _rec("corrupt", "images/corrupt.png", "Not an image."),                                                # 11
    _rec("dotdot", "images/../../root-outside.png", "Escapes with dots."),                                 # 12
    _rec("absolute", "/etc/hostname", "An absolute path."),                                                # 13
    _rec("link", "images/escape_link.png", "Escapes through a symlink."),                                  # 14
    '{"id": "broken", "image": "images/good.png", "conversations": [',                                     # 15
    _rec("empty", "images/good.png", "<image>"),                                                           # 16
    {"id": ["not", "a", "string"], "image": "images/good.png", "conversations": []},                       # 17
    {"id": "noconv", "image": "images/good.png"},                                                          # 18
    {"id": "noanswer", "image": "images/good.png", "conversations": [{"from": "human", "value": "Hi?"}]},  # 19
    _rec("dup", "images/good.png", "<image>\nA noisy square. It has many colours."),                       # 20
    _rec("tiny", "images/tiny.png", "A tiny image."),                                                      # 21
    _rec("missing", "images/nowhere.png", "A missing image."),                                             # 22
    "[1, 2, 3]",                                                                                           # 23
]
EXPECTED_REASONS = {
    3: "image_truncated", 9: "image_bomb", 10: "image_bomb", 11: "image_corrupt", 12: "image_path_escape",
    13: "image_path_escape", 14: "image_path_escape", 15: "bad_json", 16: "empty_answer", 17: "wrong_type",
    18: "missing_field", 19: "no_answer", 21: "image_too_small", 22: "image_missing", 23: "not_an_object",
}


@pytest.fixture()
def broken(tmp_path):
    _broken_world(tmp_path / "root")
    _write_jsonl(tmp_path / "records.jsonl", BROKEN_LINES)
    return tmp_path


def test_every_rule_on_real_broken_files(broken, monkeypatch):
    read = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or original(self))
    cfg = _cfg(broken)
    stats = repurpose(cfg)
    assert read and not {"root-outside.png", "escape_link.png", "hostname"} & set(read)  # escapes never opened
    quarantine = [json.loads(line) for line in (broken / "pairs" / "quarantine.jsonl").read_text().splitlines()]
    got = {int(q["location"].rsplit(":", 1)[1]): q["reason"] for q in quarantine}
    assert got == EXPECTED_REASONS
    assert all(q["source"] == "records" and q["message"] for q in quarantine)
    assert {q["id"] for q in quarantine if int(q["location"].rsplit(":", 1)[1]) in (3, 16)} == {"truncated", "empty"}

    # the identity, in numbers
    assert stats["input"] == len(BROKEN_LINES) == 23
    assert (stats["kept"], stats["duplicates"], stats["filtered"], stats["quarantined"]) == (7, 1, 0, 15)
    assert stats["accounted"] and stats["duplicates_by_kind"] == {"exact": 1}
    assert stats["quarantined_by_reason"]["image_path_escape"] == 3
    assert json.loads((broken / "pairs" / "stats.json").read_text())["kept"] == 7

    data = ShardDataset(broken / "pairs", "train", "Describe the image briefly.", "short_long")
    items = {s.id: (s, img) for s, img in (data[i] for i in range(len(data)))}
    assert set(items) == {"good", "jpg", "cmyk", "grey16", "palette", "la", "rotated"}
    assert all(img.mode == "RGB" for _, img in items.values())
    sample, _ = items["good"]
    assert (sample.answer, sample.caption) == ("A noisy square. It has many colours.", "A noisy square.")
    assert items["jpg"][0].answer == "A second noisy square."  # chat debris stripped
    assert items["rotated"][1].size == (20, 40)  # EXIF orientation 6 applied
    r, g, b = items["cmyk"][1].getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60  # CMYK red stays red
    assert items["grey16"][1].getpixel((8, 8)) == (128, 128, 128)  # 16-bit 32896 -> 8-bit 128
    palette = items["palette"][1]
    assert palette.getpixel((0, 0)) == (255, 255, 255) and palette.getpixel((5, 5)) == (0, 0, 255)
    assert items["la"][1].getpixel((3, 3)) == (255, 255, 255)  # fully transparent on white
    # an RGB PNG without orientation keeps its bytes
    row = pq.read_table(next((broken / "pairs" / "train").glob("*.parquet"))).to_pylist()[0]
    assert row["image"] == (broken / "root" / "images" / "good.png").read_bytes()


def test_caption_rules():
    assert clean_answer("<image>\n<|im_start|>assistant: A cat\n on a mat.<|im_end|></s>") == "A cat on a mat."
    assert clean_answer("gpt: <image> A dog.") == "A dog."
    first = ShortCaptionConfig(rule="first_sentence", max_words=32)
    assert short_caption("A man, e.g. a chef, cooks. He smiles.", first) == "A man, e.g. a chef, cooks."
    assert short_caption("No full stop here", first) == "No full stop here"
    assert short_caption("one two three four five.", ShortCaptionConfig(rule="max_words", max_words=3)) == "one two three"
    assert short_caption("A. B.", ShortCaptionConfig(rule="full", max_words=5)) == "A. B."


def test_shards_are_byte_identical_for_one_and_two_workers(broken):
    outs = []
    for workers in (1, 2):
        cfg = _cfg(broken, out=str(broken / f"pairs{workers}"), workers=workers, val_fraction=0.3,
                   records_per_shard=2, row_group_rows=1)
        repurpose(cfg)
        folder = Path(cfg.out)
        outs.append({str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                     if p.is_file() and p.name not in ("stats.json", "repurpose.json")})
    assert len([k for k in outs[0] if k.endswith(".parquet")]) >= 4
    assert outs[0] == outs[1]


def test_split_is_stable_when_data_is_added(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(60):
        _noise(16, 16, i).save(root / "images" / f"{i}.png")
        lines.append(_rec(f"r{i}", f"images/{i}.png", f"Caption number {i}."))
    _write_jsonl(tmp_path / "records.jsonl", lines[:30])

    def splits(out):
        cfg = _cfg(tmp_path, out=str(tmp_path / out), val_fraction=0.3)
        repurpose(cfg)
        return {split: {s.id for s, _ in ShardDataset(cfg.out, split)} for split in ("train", "val")}

    before = splits("a")
    _write_jsonl(tmp_path / "records.jsonl", lines[30:45] + lines[:30] + lines[45:])
    after = splits("b")
    assert before["val"] and before["train"]
    assert before["val"] <= after["val"] and before["train"] <= after["train"]
    assert len(after["val"] | after["train"]) == 60


def test_json_array_parquet_and_mixture(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_CHUNK", 16)  # many refills of the streaming JSON parser
    files = _broken_world(tmp_path / "a")
    # source a: a JSON array, the last element malformed
    good = [_rec(f"a{i}", "images/good.png", f"Array record {i}.", kind="brief" if i % 2 else "detailed")
            for i in range(6)]
    text = json.dumps(good)[:-1] + ', {"id": "bad", "image": oops}]'
    (tmp_path / "a" / "records.json").write_text(text)
    # source b: Parquet with image bytes (Hugging Face's {bytes, path} struct), two row groups, one corrupt image
    rows = [{"id": f"b{i}", "image": {"bytes": _encoded(_noise(16, 16, 100 + i), "PNG"), "path": None},
             "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": f"Row {i}."}]}
            for i in range(5)]
    rows[3]["image"]["bytes"] = files["corrupt.png"]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet", row_group_size=2)
    mixture = {"sources": [
        {"name": "array", "paths": ["a/records.json"], "image_root": "a", "keep_kinds": ["brief"]},
        {"name": "parquet", "paths": ["b*.parquet"], "count": 3},
    ]}
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    stats = repurpose(_cfg(tmp_path, mixture=str(tmp_path / "mixture.yaml")))
    assert stats["sources"]["array"] == {"input": 7, "kept": 3, "duplicates": 0, "filtered": 3, "quarantined": 1}
    assert stats["sources"]["parquet"] == {"input": 5, "kept": 3, "duplicates": 0, "filtered": 2, "quarantined": 0}
    assert stats["filtered_by_reason"] == {"kind": 3, "over_count": 2}
    quarantine = [json.loads(line) for line in (tmp_path / "pairs" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["reason"], q["location"].rsplit("/", 1)[1]) for q in quarantine] == [("bad_json", "records.json[6]")]
    assert stats["accounted"]


def test_parquet_rows_are_located_and_weight_samples_stably(tmp_path):
    rows = [{"id": f"b{i}", "image": _encoded(_noise(16, 16, i), "PNG") if i != 3 else b"garbage",
             "conversations": [{"from": "gpt", "value": f"Row {i}."}]} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet", row_group_size=7)
    cfg = _cfg(tmp_path, input=str(tmp_path / "b.parquet"))
    stats = repurpose(cfg)
    line = json.loads((tmp_path / "pairs" / "quarantine.jsonl").read_text())
    assert (line["reason"], line["location"].endswith("b.parquet:row 3")) == ("image_corrupt", True)
    assert stats["kept"] == 39
    mixture = {"sources": [{"name": "b", "paths": ["b.parquet"], "weight": 0.5}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(mixture))
    kept = [repurpose(_cfg(tmp_path, mixture=str(tmp_path / "m.yaml")))["kept"] for _ in range(2)]
    assert kept[0] == kept[1] and 10 <= kept[0] <= 30


def test_near_duplicates_by_perceptual_hash(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    img = _noise(64, 64, 0).resize((64, 64))
    img.save(root / "images" / "a.png")
    near = img.copy()
    near.putpixel((0, 0), (0, 0, 0))
    near.save(root / "images" / "b.png")
    _noise(64, 64, 9).save(root / "images" / "c.png")
    _write_jsonl(tmp_path / "records.jsonl", [_rec("a", "images/a.png", "First."), _rec("b", "images/b.png", "Second."),
                                              _rec("c", "images/c.png", "Third.")])
    assert repurpose(_cfg(tmp_path))["duplicates"] == 0
    stats = repurpose(_cfg(tmp_path, near_duplicates=True))
    assert stats["duplicates_by_kind"] == {"near": 1} and stats["kept"] == 2


def test_exit_code_only_for_quarantine_limit_or_unreadable_input(broken):
    from cafe.cli import app

    (broken / "params.yaml").write_text(yaml.safe_dump({"repurpose": _cfg(broken).model_dump(mode="json")}))
    runner = CliRunner()
    ok = runner.invoke(app, ["repurpose", "-p", str(broken / "params.yaml")])
    assert ok.exit_code == 0, ok.output
    assert read_data_version(broken / "pairs") == json.loads((broken / "pairs" / "stats.json").read_text())["data_version"]

    over = runner.invoke(app, ["repurpose", "-p", str(broken / "params.yaml"), "-s", "repurpose.max_quarantine_share=0.5"])
    assert over.exit_code == 1 and "exceeds repurpose.max_quarantine_share" in " ".join(over.output.split())
    assert (broken / "pairs" / "stats.json").is_file() and not (broken / "pairs" / DATA_VERSION).exists()
    with pytest.raises(FileNotFoundError, match="run `cafe repurpose`"):
        ShardDataset(broken / "pairs")

    missing = runner.invoke(app, ["repurpose", "-p", str(broken / "params.yaml"), "-s", "repurpose.input=nowhere.jsonl"])
    assert missing.exit_code == 1 and "input unreadable" in " ".join(missing.output.split())
    with pytest.raises(RepurposeError, match="expected a JSON array"):
        (broken / "object.json").write_text('{"id": 1}')
        repurpose(_cfg(broken, input=str(broken / "object.json")))
