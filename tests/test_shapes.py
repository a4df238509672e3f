import hashlib
import json
from pathlib import Path

from cafe.config import SynthConfig
from cafe.data import shapes
from cafe.evaluation.generation import parse_objects
from cafe.evaluation.retrieval import load_karpathy


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    cfgs = [SynthConfig(out=str(tmp_path / name), train_images=20, retrieval_images=10, probe_images=4, seed=seed)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    for cfg in cfgs:
        shapes.generate(cfg)
    a, b, c = (_digest(tmp_path / n / "train") for n in "abc")
    assert a == b and a != c


def test_llava_onevision_format(world):
    records = json.loads((world / "train" / "instructions.json").read_text())
    assert {r["kind"] for r in records} == {"brief", "detailed", "yesno"}
    for rec in records[:40]:
        assert set(rec) >= {"id", "image", "conversations"}
        human, gpt = rec["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"]
        assert (world / "train" / rec["image"]).is_file()


def test_karpathy_set_has_five_distinct_phrasings_per_image(world):
    data = json.loads((world / "eval" / "retrieval_karpathy.json").read_text())
    for entry in data["images"]:
        raws = [s["raw"] for s in entry["sentences"]]
        assert len(raws) == 5 and len(set(raws)) == 5
        assert entry["split"] == "test"
    images, captions, owner = load_karpathy(world / "eval" / "retrieval_karpathy.json")
    assert len(captions) == 5 * len(images) and all(Path(p).is_file() for p in images)


def test_every_phrasing_names_exactly_the_objects_present(world):
    annotations = json.loads((world / "eval" / "annotations.json").read_text())
    data = json.loads((world / "eval" / "retrieval_karpathy.json").read_text())
    for entry in data["images"]:
        truth = {(o["colour"], o["shape"]) for o in annotations[entry["filename"]]}
        for s in entry["sentences"]:
            assert parse_objects(s["raw"], shapes.COLOURS, shapes.SHAPES) == truth, s["raw"]


def test_default_world_puts_chance_retrieval_below_one_percent():
    cfg = SynthConfig()
    assert 1 / cfg.retrieval_images < 0.01
    # and scenes are varied enough that almost none repeat exactly
    import random
    rng = random.Random(cfg.eval_seed)
    scenes = [shapes.sample_scene(rng, str(i), cfg.object_count_weights) for i in range(cfg.retrieval_images)]
    keys = [tuple(sorted((o.colour, o.shape, o.size, o.position) for o in s.objects)) for s in scenes]
    assert len(set(keys)) / len(keys) > 0.97


def test_probes_are_balanced_over_three_pope_splits(world):
    lines = [json.loads(l) for l in (world / "eval" / "pope.jsonl").read_text().splitlines()]
    assert {l["split"] for l in lines} == {"random", "popular", "adversarial"}
    assert sum(l["label"] == "yes" for l in lines) == sum(l["label"] == "no" for l in lines)
    annotations = json.loads((world / "eval" / "annotations.json").read_text())
    for line in lines:
        named = parse_objects(line["text"], shapes.COLOURS, shapes.SHAPES)
        present = {(o["colour"], o["shape"]) for o in annotations[line["image"]]}
        assert (named <= present) == (line["label"] == "yes")
