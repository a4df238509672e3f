"""Pairs as an instruction folder: self-contained (images copied, paths relative), and through the data stage
it yields the same (image, caption) pairs training reads."""

from __future__ import annotations

import json

from PIL import Image

from cafe.config import RepurposeConfig
from cafe.data.pair_folder import count_records, repurpose_folder, write_pair_folder
from cafe.data.pairs import ShardDataset


def test_folder_is_self_contained_and_repurposes_to_the_pairs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, colour in (("a.png", (200, 0, 0)), ("b.png", (0, 200, 0))):
        Image.new("RGB", (16, 16), colour).save(src / name)
    pairs = [{"id": "p0", "image": str(src / "a.png"), "caption": "a red square."},
             {"id": "p1", "image": str(src / "a.png"), "caption": "red all over."},
             {"id": "p2", "image": str(src / "b.png"), "caption": "a green square."}]
    folder = tmp_path / "window"
    (folder / "stale").mkdir(parents=True)  # a previous window's folder is replaced
    assert write_pair_folder(pairs, folder, "Describe the image briefly.") == 3 == count_records(folder)
    assert not (folder / "stale").exists() and count_records(tmp_path / "none") == 0
    records = json.loads((folder / "instructions.json").read_text())
    assert records[0]["conversations"] == [{"from": "human", "value": "<image>\nDescribe the image briefly."},
                                           {"from": "gpt", "value": "a red square."}]
    assert records[0]["image"] == records[1]["image"] != records[2]["image"]  # one copy per image
    assert len(list((folder / "images").iterdir())) == 2
    for src_file in src.iterdir():  # nothing points outside the folder any more
        src_file.unlink()

    cfg = RepurposeConfig(workers=1, progress=False, val_fraction=0.0, keep_kinds=["brief"])
    stats = repurpose_folder(cfg, folder, tmp_path / "shards")
    assert stats["kept"] == 3 and stats["accounted"]
    got = {s.id: (s.caption, img.getpixel((0, 0))) for s, img in ShardDataset(tmp_path / "shards")}
    assert got == {"p0": ("a red square.", (200, 0, 0)), "p1": ("red all over.", (200, 0, 0)),
                   "p2": ("a green square.", (0, 200, 0))}
