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
    assert {r["kind"] for r in records} == {"brief", "detailed", "yesno", "choice"}
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


def test_eval_suite_files_are_deterministic_and_right_by_construction(world, tmp_path):
    from cafe.evaluation import mmstar, pope, sugarcrepe, throne

    cfg = SynthConfig(out=str(tmp_path / "again"), train_images=160, retrieval_images=40, probe_images=10)
    shapes.generate(cfg)
    assert _digest(world / "eval") == _digest(tmp_path / "again" / "eval")
    eval_dir = world / "eval"
    annotations = json.loads((eval_dir / "annotations.json").read_text())
    objects = {name: {(o["colour"], o["shape"]) for o in objs} for name, objs in annotations.items()}

    # POPE split files hold the same questions as pope.jsonl
    legacy = [json.loads(l) for l in (eval_dir / "pope.jsonl").read_text().splitlines()]
    split_qs = pope.load_pope(eval_dir)
    assert sorted((q.question_id, q.split, q.label) for q in split_qs) == sorted((l["question_id"], l["split"], l["label"]) for l in legacy)

    # THRONE: the true detailed description names exactly the present classes
    vocab = throne.Vocabulary.load(eval_dir / "throne" / "vocabulary.json")
    records = throne.load_annotations(eval_dir / "throne" / "annotations.json")
    for rec in records:
        scene = shapes.Scene("x", [shapes.ShapeObject(**o) for o in annotations[rec["image"]]], (0, 0, 0))
        assert {vocab.classes[c] for c in vocab.find(shapes.detailed_description(scene))} == set(rec["objects"])

    # SugarCrepe: positives name the true objects; negatives change them
    items = sugarcrepe.load_sugarcrepe(eval_dir / "sugarcrepe")
    assert {i.subset for i in items} == set(shapes.SUGARCREPE_SUBSETS)
    for item in items:
        truth = objects[item.filename]
        assert parse_objects(item.caption, shapes.COLOURS, shapes.SHAPES) == truth
        assert item.negative != item.caption
        negative = parse_objects(item.negative, shapes.COLOURS, shapes.SHAPES)
        assert negative != truth or item.subset == "swap_att"

    # MMStar: every category present; counting answers are the true counts
    questions = mmstar.load_mmstar(eval_dir / "mmstar.jsonl")
    assert {q.category for q in questions} >= {"counting", "colour"}
    for q in questions:
        if q.category == "counting":
            assert mmstar.options(q.question)[q.answer] == shapes.NUMBER_WORDS[len(objects[q.image])]
        if q.category == "colour":
            shape = q.question.split("the ")[1].split("?")[0]
            assert (mmstar.options(q.question)[q.answer], shape) in objects[q.image]
