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


def test_worlds_split_the_scene_space_so_no_held_out_scene_is_trained_on(tmp_path):
    cfg = SynthConfig(out=str(tmp_path / "w"), train_images=300, retrieval_images=60, probe_images=20, dev_seed=5)
    counts = shapes.generate(cfg)
    root = tmp_path / "w"
    train_keys, _ = shapes._train_world(root / "train")
    assert len(train_keys) > 200
    held_out = {}
    for world in ("eval", "dev"):
        annotations = json.loads((root / world / "annotations.json").read_text())
        keys = [shapes.scene_key([shapes.ShapeObject(**o) for o in objs]) for objs in annotations.values()]
        assert len(set(keys)) == len(keys) == 80  # every held-out image its own scene
        assert all(shapes.scene_world([shapes.ShapeObject(**o) for o in objs], cfg.held_out_share) == world
                   for objs in annotations.values())
        held_out[world] = set(keys)
        overlap = json.loads((root / world / "overlap.json").read_text())
        assert overlap["scenes_in_train"]["all"] == 0 and overlap["shared_caption_texts"] == 0
    assert not train_keys & held_out["eval"] and not train_keys & held_out["dev"]
    assert not held_out["eval"] & held_out["dev"]
    assert counts["scenes_in_train"] == counts["dev_scenes_in_train"] == 0
    # a world without a dev seed writes no dev folder
    shapes.generate(cfg.model_copy(update={"out": str(tmp_path / "nodev"), "dev_seed": None}))
    assert not (tmp_path / "nodev" / "dev").exists()


def test_no_retrieval_caption_text_describes_two_images(world):
    data = json.loads((world / "eval" / "retrieval_karpathy.json").read_text())
    texts = [s["raw"] for entry in data["images"] for s in entry["sentences"]]
    assert len(set(texts)) == len(texts)


def test_overlap_counts_shared_texts_and_trained_scenes_of_any_world(tmp_path):
    # a hand-made held-out world: two images with the same scene, one of them also a training scene
    train, held = tmp_path / "train", tmp_path / "eval"
    train.mkdir(), held.mkdir()
    objs = [shapes.ShapeObject("red", "circle", "large", "center")]
    scene = shapes.Scene("s", objs, (0, 0, 0))
    records = [{"id": "t-detail", "image": "a.png", "kind": "detailed",
                "conversations": shapes._conversation("Describe the image in detail.", shapes.detailed_description(scene))},
               {"id": "t-brief", "image": "a.png", "kind": "brief",
                "conversations": shapes._conversation("Describe the image briefly.", shapes.phrasings(scene)[0])}]
    (train / "instructions.json").write_text(json.dumps(records))
    other = [shapes.ShapeObject("blue", "cross", "small", "top")]
    annotations = {"a.png": [vars(o) for o in objs], "b.png": [vars(o) for o in objs], "c.png": [vars(o) for o in other]}
    (held / "annotations.json").write_text(json.dumps(annotations))
    sentences = lambda s: [{"raw": t, "sentid": i} for i, t in enumerate(shapes.phrasings(s))]  # noqa: E731
    karpathy = {"images": [{"filename": "a.png", "sentences": sentences(scene)},
                           {"filename": "b.png", "sentences": sentences(scene)}]}
    (held / "retrieval_karpathy.json").write_text(json.dumps(karpathy))
    o = shapes.world_overlap(train, held)
    assert o["train_scenes"] == 1 and o["images_sharing_a_scene"] == 2
    assert o["scenes_in_train"]["retrieval"] == {"1": 2, "all": 2} and o["scenes_in_train"]["probes"] == {"all": 0}
    assert o["shared_caption_texts"] == 5 and o["captions_with_shared_texts"] == 10 and o["images_with_shared_texts"] == 2
    assert o["captions_seen_in_training"] == 2 and o["seen_caption_texts"] == [shapes.phrasings(scene)[0]]


# sha256 (first 16 hex digits) of every file of the embedded default's evaluation world (params.yaml synth),
# images by their decoded pixels; a change here changes every reported number, so it must be deliberate
EVAL_DIGESTS = {
    "annotations.json": "0dd8e176b4475479",
    "images/*.png pixels": "a3ffd92440b4d389",
    "mmstar.jsonl": "17cbbc3f8995a5df",
    "pope.jsonl": "913c214680669cdf",
    "pope/shapes_pope_adversarial.json": "d2910981a294a491",
    "pope/shapes_pope_popular.json": "86ab3420c5ab7b7b",
    "pope/shapes_pope_random.json": "6f2a2685d9cf3e68",
    "retrieval_karpathy.json": "8aeda01a5731e6ac",
    "sugarcrepe/add_obj.json": "f967c9d3f57d71e1",
    "sugarcrepe/replace_att.json": "c342ae83590dc45b",
    "sugarcrepe/replace_obj.json": "d6627bd20a4eed90",
    "sugarcrepe/swap_att.json": "4a89ec26cbc53300",
    "throne/annotations.json": "65e3b3a7d31bbacb",
    "throne/vocabulary.json": "53acc34cb53e261b",
}


def _world_digests(folder: Path) -> dict[str, str]:
    from PIL import Image

    pixels = hashlib.sha256()
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel == "overlap.json":
            continue
        if rel.startswith("images/"):
            with Image.open(p) as img:
                pixels.update(rel.encode() + img.convert("RGB").tobytes())
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    out["images/*.png pixels"] = pixels.hexdigest()[:16]
    return out


def test_embedded_default_evaluation_files_are_pinned(tmp_path):
    from cafe.config import load_params

    cfg = load_params(Path(__file__).parents[1] / "params.yaml").synth
    shapes.write_held_out(cfg, tmp_path / "eval", "eval", cfg.eval_seed)
    assert _world_digests(tmp_path / "eval") == EVAL_DIGESTS
