"""The shapes world: the embedded dataset (`cafe synth`).

Images of 1-3 coloured shapes (colour, shape, size, position in a 3x3 grid), deterministic by seed, written
in the public formats the real pipeline reads:

- training data (``train/``) as LLaVA-OneVision instruction records (brief captions, detailed descriptions,
  yes/no object questions, MMStar-style multiple choice), a JSON list plus an image folder;
- held-out worlds from their own seeds: the evaluation world (``eval/``, final tables only) and the dev
  world (``dev/``, ``synth.dev_seed``, for tuning), each with a retrieval set in the Karpathy-split format
  used for Flickr30K/COCO (five different phrasings per image), POPE's per-split question files, the
  ground-truth objects of every image, THRONE-style annotations and vocabulary, SugarCrepe's subset files
  and MMStar-format multiple choice (counting, colour of an object, relative position).

The three worlds split the scene space: a scene's world is a hash of its content (:func:`scene_world`), so
the training world never draws a dev or evaluation scene, and dev and evaluation never share one. Within
a held-out world every image is its own scene and no retrieval caption text describes two images.
``overlap.json`` in each held-out world measures what remains shared with training (:func:`world_overlap`).

40 object types x 2 sizes x 9 cells give enough distinct scenes that chance retrieval on 500 images is
0.2%, and a caption can be right or wrong object by object.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from cafe.config import SynthConfig
from cafe.data.mmeb import write_mmeb

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "large")
# 3x3 grid, row-major; the phrase each cell is described with.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

BRIEF_INSTRUCTIONS = (
    "Describe the image briefly.",
    "Give a short caption of the image.",
    "What is in the image? Answer in a few words.",
)
DETAILED_INSTRUCTIONS = (
    "Describe the image in detail.",
    "Give a detailed description of the image.",
)
# THRONE vocabulary: other words a description may use for a shape
SHAPE_SYNONYMS = {"circle": ["disc", "ball"], "square": ["box"], "triangle": [], "diamond": ["rhombus"],
                  "cross": ["plus"]}
CHOICE_CATEGORIES = ("counting", "colour", "position")
COUNT_OPTIONS = ("one", "two", "three", "four")
RELATIONS = ("left", "right", "above", "below")
LETTERS = "ABCD"
SUGARCREPE_SUBSETS = ("replace_att", "replace_obj", "swap_att", "add_obj")


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    size: str
    position: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    id: str
    objects: list[ShapeObject]
    background: tuple[int, int, int]


def sample_scene(rng: random.Random, scene_id: str, weights: list[float]) -> Scene:
    """Objects with distinct (colour, shape) in distinct cells, listed in reading order."""
    count = rng.choices([1, 2, 3], weights=weights)[0]
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
    cells = sorted(rng.sample(range(len(POSITIONS)), count))
    objects = [
        ShapeObject(colour=c, shape=s, size=rng.choice(SIZES), position=POSITIONS[cell])
        for (c, s), cell in zip(kinds, cells)
    ]
    grey = rng.randint(105, 150)
    background = (grey + rng.randint(-8, 8), grey + rng.randint(-8, 8), grey + rng.randint(-8, 8))
    return Scene(id=scene_id, objects=objects, background=background)


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw the scene; objects jitter a little inside their cell so no two images are pixel-identical."""
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for obj in scene.objects:
        idx = POSITIONS.index(obj.position)
        row, col = divmod(idx, 3)
        radius = cell * (0.24 if obj.size == "small" else 0.44)
        jitter = cell * 0.5 - radius - 1
        cx = (col + 0.5) * cell + rng.uniform(-jitter, jitter) * 0.5
        cy = (row + 0.5) * cell + rng.uniform(-jitter, jitter) * 0.5
        fill = COLOURS[obj.colour]
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            r = radius * 0.85
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.8), (cx + radius, cy + radius * 0.8)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)
        elif obj.shape == "cross":
            w = radius * 0.35
            draw.rectangle((cx - radius, cy - w, cx + radius, cy + w), fill=fill)
            draw.rectangle((cx - w, cy - radius, cx + w, cy + radius), fill=fill)
    return img


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _where(position: str) -> str:
    return "in the center" if position == "center" else f"at the {position}"


def phrasings(scene: Scene) -> list[str]:
    """Five different descriptions of one scene (all name every object with its size)."""
    objs = scene.objects
    n = len(objs)
    return [
        brief_caption(objs),
        _join([f"{_article(f'{o.size} {o.colour} {o.shape}')} {_where(o.position)}" for o in objs]) + ".",
        f"{NUMBER_WORDS[n]} {'object' if n == 1 else 'objects'}: "
        + _join([_article(f"{o.colour} {o.shape}") + f" that is {o.size}" for o in objs]) + ".",
        "an image with " + _join([_article(f"{o.size} {o.colour} {o.shape}") for o in reversed(objs)]) + ".",
        " ".join(f"there is {_article(f'{o.size} {o.colour} {o.shape}')} {_where(o.position)}." for o in objs),
    ]


def detailed_description(scene: Scene) -> str:
    n = len(scene.objects)
    head = f"There {'is one object' if n == 1 else f'are {NUMBER_WORDS[n]} objects'} on a grey background."
    body = " ".join(
        f"{_article(f'{o.size} {o.colour} {o.shape}').capitalize()} is {_where(o.position)}." for o in scene.objects
    )
    return f"{head} {body}"


_DESCRIBED = re.compile(r"an? (small|large) ([a-z]+) ([a-z]+) is (?:in the (center)|at the ([a-z ]+))\.")


def objects_from_description(text: str) -> list[ShapeObject]:
    """The objects a :func:`detailed_description` names (empty for any other text)."""
    found = []
    for size, colour, shape, center, where in _DESCRIBED.findall(text.lower()):
        position = center or where
        if colour in COLOURS and shape in SHAPES and position in POSITIONS:
            found.append(ShapeObject(colour, shape, size, position))
    return found


def brief_caption(objects: list[ShapeObject]) -> str:
    """The first phrasing: "a large red circle and a small blue cross." """
    return _join([_article(f"{o.size} {o.colour} {o.shape}") for o in objects]) + "."


def _options_text(options: list[str]) -> str:
    return "Options: " + ", ".join(f"{letter}: {text}" for letter, text in zip(LETTERS, options))


def _relation(a: ShapeObject, b: ShapeObject) -> str | None:
    """Where ``a`` is relative to ``b`` when they share a row or a column (else ambiguous: None)."""
    ra, ca = divmod(POSITIONS.index(a.position), 3)
    rb, cb = divmod(POSITIONS.index(b.position), 3)
    if ra == rb:
        return "left" if ca < cb else "right"
    if ca == cb:
        return "above" if ra < rb else "below"
    return None


def position_pairs(objects: list[ShapeObject]) -> list[tuple[ShapeObject, ShapeObject]]:
    """Ordered pairs of distinct objects whose relation can be asked (they share a row or a column)."""
    return [(a, b) for a in objects for b in objects if a is not b and _relation(a, b)]


def position_question(a: ShapeObject, b: ShapeObject, rng: random.Random) -> tuple[str, str]:
    """The MMStar-style relative-position question about ``a`` and ``b`` (options shuffled by ``rng``) and
    its answer letter."""
    pool = list(RELATIONS)
    rng.shuffle(pool)
    question = f"Where is the {a.colour} {a.shape} relative to the {b.colour} {b.shape}?"
    return f"{question}\n{_options_text(pool)}", LETTERS[pool.index(_relation(a, b))]


def choice_question(scene: Scene, category: str, rng: random.Random) -> tuple[str, str] | None:
    """An MMStar-style question ("...?\nOptions: A: ..., B: ...") and its answer letter, or None when the
    scene cannot pose this kind (no object with a unique shape, no pair sharing a row or column)."""
    objs = scene.objects
    if category == "counting":
        question, truth, pool = "How many objects are in the image?", NUMBER_WORDS[len(objs)], list(COUNT_OPTIONS)
    elif category == "colour":
        unique = [o for o in objs if sum(p.shape == o.shape for p in objs) == 1]
        if not unique:
            return None
        target = rng.choice(unique)
        others = [o.colour for o in objs if o.colour != target.colour]
        rest = [c for c in COLOURS if c != target.colour and c not in others]
        distractors = list(dict.fromkeys(others))[:3]
        distractors += rng.sample(rest, 3 - len(distractors))
        question, truth, pool = f"What colour is the {target.shape}?", target.colour, [target.colour, *distractors]
    elif category == "position":
        pairs = position_pairs(objs)
        if not pairs:
            return None
        return position_question(*rng.choice(pairs), rng)
    else:
        raise ValueError(f"unknown choice category {category!r}; known: {CHOICE_CATEGORIES}")
    rng.shuffle(pool)
    return f"{question}\n{_options_text(pool)}", LETTERS[pool.index(truth)]


def negative_objects(scene: Scene, rng: random.Random) -> dict[str, tuple[str, str]]:
    """Absent objects for the three POPE splits: random, popular (a frequent kind), adversarial
    (shares colour or shape with a present object)."""
    present = {(o.colour, o.shape) for o in scene.objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    anchor = rng.choice(scene.objects)
    adversarial = [k for k in absent if k[0] == anchor.colour or k[1] == anchor.shape]
    popular = [k for k in absent if k[1] in ("circle", "square")] or absent
    return {
        "random": rng.choice(absent),
        "popular": rng.choice(popular),
        "adversarial": rng.choice(adversarial or absent),
    }


def _conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def instruction_records(scene: Scene, image: str, rng: random.Random, choice_rng: random.Random | None = None) -> list[dict]:
    """LLaVA-OneVision records for one training image: brief, detailed, yes/no and (with ``choice_rng``)
    multiple-choice kinds."""
    records = [
        {"id": f"{scene.id}-brief", "image": image, "kind": "brief",
         "conversations": _conversation(rng.choice(BRIEF_INSTRUCTIONS), rng.choice(phrasings(scene)))},
        {"id": f"{scene.id}-detail", "image": image, "kind": "detailed",
         "conversations": _conversation(rng.choice(DETAILED_INSTRUCTIONS), detailed_description(scene))},
    ]
    present = rng.choice(scene.objects)
    absent = rng.choice(list(negative_objects(scene, rng).values()))
    for tag, (colour, shape), answer in (("yes", (present.colour, present.shape), "Yes"), ("no", absent, "No")):
        records.append({"id": f"{scene.id}-{tag}", "image": image, "kind": "yesno",
                        "conversations": _conversation(f"Is there {_article(f'{colour} {shape}')} in the image?", answer)})
    if choice_rng is not None:
        for category in choice_rng.sample(CHOICE_CATEGORIES, len(CHOICE_CATEGORIES)):
            posed = choice_question(scene, category, choice_rng)
            if posed is not None:
                records.append({"id": f"{scene.id}-choice", "image": image, "kind": "choice",
                                "conversations": _conversation(*posed)})
                break
    return records


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def scene_key(objects: list[ShapeObject]) -> str:
    """What a scene is, independent of listing order and rendering: ``"top:large red circle|center:..."``."""
    ordered = sorted(objects, key=lambda o: POSITIONS.index(o.position))
    return "|".join(f"{o.position}:{o.size} {o.colour} {o.shape}" for o in ordered)


def scene_world(objects: list[ShapeObject], held_out_share: float) -> str:
    """The world ("train", "dev" or "eval") a scene belongs to: a hash of its content, so the split of the
    scene space is the same whatever the seeds, and a training scene can never be an evaluation scene."""
    u = int.from_bytes(hashlib.sha256(scene_key(objects).encode()).digest()[:8], "big") / 2 ** 64
    return "eval" if u < held_out_share else "dev" if u < 2 * held_out_share else "train"


def _scenes(rng: random.Random, prefix: str, count: int, weights: list[float],
            accept: Callable[[Scene], bool] = lambda scene: True) -> list[Scene]:
    """``count`` scenes drawn until ``accept`` takes them (rejected draws are skipped)."""
    scenes: list[Scene] = []
    attempts = 0
    while len(scenes) < count:
        attempts += 1
        if attempts > 200 * count + 1000:
            raise ValueError(f"only {len(scenes)} of {count} {prefix!r} scenes fit their world (unique scenes and "
                             "caption texts); lower synth.retrieval_images / synth.probe_images or raise "
                             "synth.held_out_share")
        scene = sample_scene(rng, f"{prefix}{len(scenes):06d}", weights)
        if accept(scene):
            scenes.append(scene)
    return scenes


def held_out_scenes(cfg: SynthConfig, world: str, seed: int) -> tuple[list[Scene], list[Scene], random.Random]:
    """Retrieval and probe scenes of the dev or evaluation world: every scene from that world's part of the
    scene space and drawn once, and no caption text of the retrieval set describes two images (so no
    retrieval query is decided by a tie). Returns the random stream, which goes on to render them."""
    rng = random.Random(seed)
    keys: set[str] = set()
    texts: set[str] = set()

    def new_scene(scene: Scene) -> bool:
        key = scene_key(scene.objects)
        if key in keys or scene_world(scene.objects, cfg.held_out_share) != world:
            return False
        keys.add(key)
        return True

    def new_captions(scene: Scene) -> bool:
        said = phrasings(scene)
        if texts.intersection(said) or not new_scene(scene):
            return False
        texts.update(said)
        return True

    retrieval = _scenes(rng, "ret", cfg.retrieval_images, cfg.object_count_weights, new_captions)
    probes = _scenes(rng, "probe", cfg.probe_images, cfg.object_count_weights, new_scene)
    return retrieval, probes, rng


def generate(cfg: SynthConfig) -> dict[str, int]:
    """Write the whole shapes world under ``cfg.out`` (train/, eval/ and, with ``dev_seed``, dev/); returns
    counts for the summary, with the overlap of each held-out world with the training world."""
    out = Path(cfg.out)
    train_dir = out / "train"
    (train_dir / "images").mkdir(parents=True, exist_ok=True)

    rng = random.Random(cfg.seed)
    # the newer record kinds draw from their own streams, so that the older files stay byte-identical
    choice_rng = random.Random(f"{cfg.seed}:choice") if cfg.choice_records else None
    records: list[dict] = []
    in_train = lambda scene: scene_world(scene.objects, cfg.held_out_share) == "train"  # noqa: E731
    for scene in _scenes(rng, "train", cfg.train_images, cfg.object_count_weights, in_train):
        image = f"images/{scene.id}.png"
        render(scene, cfg.image_size, rng).save(train_dir / image)
        records.extend(instruction_records(scene, image, rng, choice_rng))
    _write_json(train_dir / "instructions.json", records)
    counts = {"train_images": cfg.train_images, "instruction_records": len(records)}

    worlds = {"eval": cfg.eval_seed} | ({"dev": cfg.dev_seed} if cfg.dev_seed is not None else {})
    for world, seed in worlds.items():
        written = write_held_out(cfg, out / world, world, seed)
        overlap = world_overlap(train_dir, out / world)
        _write_json(out / world / "overlap.json", overlap)
        written |= {"scenes_in_train": overlap["scenes_in_train"]["all"],
                    "shared_caption_texts": overlap["shared_caption_texts"]}
        counts |= {k if world == "eval" else f"dev_{k}": v for k, v in written.items()}
    return counts


def write_held_out(cfg: SynthConfig, folder: Path, world: str, seed: int) -> dict[str, int]:
    """One held-out world (evaluation or dev): images, the retrieval set, annotations, POPE probes and the
    rest of the suite. Depends only on ``seed``, the sizes and the scene split, never on the training world."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    retrieval, probes, rng = held_out_scenes(cfg, world, seed)
    annotations: dict[str, list[dict]] = {}
    for scene in retrieval + probes:
        render(scene, cfg.image_size, rng).save(folder / "images" / f"{scene.id}.png")
        annotations[f"{scene.id}.png"] = [asdict(o) for o in scene.objects]

    karpathy = {"dataset": "shapes", "images": [
        {"filename": f"{s.id}.png", "filepath": "images", "imgid": i, "split": "test",
         "sentences": [{"raw": text, "sentid": 5 * i + j} for j, text in enumerate(phrasings(s))]}
        for i, s in enumerate(retrieval)]}
    _write_json(folder / "retrieval_karpathy.json", karpathy)
    _write_json(folder / "annotations.json", annotations)

    pope_lines = []
    qid = 0
    for scene in probes:
        negatives = negative_objects(scene, rng)
        for split, (colour, shape) in negatives.items():
            present = rng.choice(scene.objects)
            for (c, s), label in (((present.colour, present.shape), "yes"), ((colour, shape), "no")):
                pope_lines.append({"question_id": qid, "image": f"{scene.id}.png", "split": split,
                                   "text": f"Is there {_article(f'{c} {s}')} in the image?", "label": label})
                qid += 1
    _write_jsonl(folder / "pope.jsonl", pope_lines)
    suite = write_eval_suite(folder, retrieval, probes, pope_lines, random.Random(f"{seed}:suite"))
    suite.update(write_mmeb(folder, random.Random(f"{seed}:mmeb")))  # the same sets as MMEB tasks
    return {"retrieval_images": len(retrieval), "retrieval_captions": 5 * len(retrieval),
            "probe_questions": len(pope_lines), **suite}


def _train_world(train_dir: Path) -> tuple[set[str], set[str]]:
    """Scene keys (from the detailed descriptions) and every reply text of a training world's records."""
    records = json.loads((Path(train_dir) / "instructions.json").read_text())
    keys, texts = set(), set()
    for rec in records:
        reply = rec["conversations"][-1]["value"]
        texts.add(reply)
        if rec.get("kind", "detailed") == "detailed":
            objects = objects_from_description(reply)
            if objects:
                keys.add(scene_key(objects))
    return keys, texts


def world_overlap(train_dir: str | Path, held_out_dir: str | Path) -> dict:
    """How a held-out world (as written on disk, by this generator or an older one) overlaps the training
    world and itself: scenes that also occur in training (by object count), images that share a scene,
    retrieval caption texts that describe two or more images, and caption texts that are training replies."""
    train_keys, train_texts = _train_world(Path(train_dir))
    folder = Path(held_out_dir)
    annotations = json.loads((folder / "annotations.json").read_text())
    karpathy = json.loads((folder / "retrieval_karpathy.json").read_text())["images"]
    retrieval_files = {entry["filename"] for entry in karpathy}
    key_of = {name: scene_key([ShapeObject(**o) for o in objs]) for name, objs in annotations.items()}
    key_count = Counter(key_of.values())

    def by_count(names: list[str], pick: Callable[[str], bool]) -> dict[str, int]:
        out = Counter(str(len(annotations[n])) for n in names if pick(n))
        return {**{k: out[k] for k in sorted(out)}, "all": sum(out.values())}

    parts = {"retrieval": [n for n in annotations if n in retrieval_files],
             "probes": [n for n in annotations if n not in retrieval_files]}
    owners: dict[str, set[str]] = {}
    for entry in karpathy:
        for sentence in entry["sentences"]:
            owners.setdefault(sentence["raw"], set()).add(entry["filename"])
    shared = {text: imgs for text, imgs in owners.items() if len(imgs) > 1}
    seen = sorted(text for text in owners if text in train_texts)
    return {
        "train_scenes": len(train_keys),
        "images": {part: by_count(names, lambda n: True) for part, names in parts.items()},
        "scenes_in_train": {**{part: by_count(names, lambda n: key_of[n] in train_keys) for part, names in parts.items()},
                            "all": sum(k in train_keys for k in key_of.values())},
        "images_sharing_a_scene": sum(key_count[k] > 1 for k in key_of.values()),
        "shared_caption_texts": len(shared),
        "captions_with_shared_texts": sum(
            1 for entry in karpathy for s in entry["sentences"] if s["raw"] in shared),
        "images_with_shared_texts": len(set().union(*shared.values())) if shared else 0,
        "captions_seen_in_training": sum(1 for entry in karpathy for s in entry["sentences"] if s["raw"] in train_texts),
        "seen_caption_texts": seen,
    }


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp.replace(path)


def sugarcrepe_negative(scene: Scene, subset: str, rng: random.Random) -> str | None:
    """A hard negative caption for the scene's brief caption, or None when the subset does not apply."""
    objs = list(scene.objects)
    present = {(o.colour, o.shape) for o in objs}
    i = rng.randrange(len(objs))
    o = objs[i]
    if subset == "replace_att":
        options = [c for c in COLOURS if (c, o.shape) not in present and all(p.colour != c for p in objs)]
        objs[i] = ShapeObject(rng.choice(options), o.shape, o.size, o.position)
    elif subset == "replace_obj":
        options = [s for s in SHAPES if (o.colour, s) not in present]
        objs[i] = ShapeObject(o.colour, rng.choice(options), o.size, o.position)
    elif subset == "swap_att":
        pairs = [(a, b) for a in range(len(objs)) for b in range(a + 1, len(objs))
                 if objs[a].colour != objs[b].colour and objs[a].shape != objs[b].shape]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        oa, ob = objs[a], objs[b]
        objs[a] = ShapeObject(ob.colour, oa.shape, oa.size, oa.position)
        objs[b] = ShapeObject(oa.colour, ob.shape, ob.size, ob.position)
    elif subset == "add_obj":
        colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present])
        objs.append(ShapeObject(colour, shape, rng.choice(SIZES), "center"))
    else:
        raise ValueError(f"unknown SugarCrepe subset {subset!r}")
    return brief_caption(objs)


def write_eval_suite(eval_dir: Path, retrieval: list[Scene], probes: list[Scene], pope_lines: list[dict],
                     rng: random.Random) -> dict[str, int]:
    """POPE split files, THRONE annotations + vocabulary, SugarCrepe subsets and MMStar questions."""
    for split in ("random", "popular", "adversarial"):
        lines = [{k: v for k, v in line.items() if k != "split"} for line in pope_lines if line["split"] == split]
        _write_jsonl(eval_dir / "pope" / f"shapes_pope_{split}.json", lines)

    (eval_dir / "throne").mkdir(exist_ok=True)
    vocabulary = {f"{c} {s}": [f"{c} {syn}" for syn in SHAPE_SYNONYMS[s]] for c in COLOURS for s in SHAPES}
    _write_json(eval_dir / "throne" / "vocabulary.json", vocabulary)
    _write_json(eval_dir / "throne" / "annotations.json",
                [{"image": f"{s.id}.png", "objects": [o.name for o in s.objects]} for s in probes])

    (eval_dir / "sugarcrepe").mkdir(exist_ok=True)
    pairs = 0
    for subset in SUGARCREPE_SUBSETS:
        items = {}
        for scene in retrieval:
            negative = sugarcrepe_negative(scene, subset, rng)
            if negative is not None:
                items[str(len(items))] = {"filename": f"{scene.id}.png", "caption": brief_caption(scene.objects),
                                          "negative_caption": negative}
        _write_json(eval_dir / "sugarcrepe" / f"{subset}.json", items)
        pairs += len(items)

    questions = []
    for scene in probes:
        for category in CHOICE_CATEGORIES:
            posed = choice_question(scene, category, rng)
            if posed is not None:
                questions.append({"index": len(questions), "question": posed[0], "answer": posed[1],
                                  "category": category, "l2_category": "shapes", "image": f"{scene.id}.png"})
    _write_jsonl(eval_dir / "mmstar.jsonl", questions)
    return {"sugarcrepe_pairs": pairs, "mmstar_questions": len(questions), "throne_images": len(probes)}


def vocabulary_corpus() -> list[str]:
    """Every word the shapes world can say, for training the tiny tokenizer."""
    words = list(COLOURS) + list(SHAPES) + list(SIZES) + [p for pos in POSITIONS for p in pos.split()]
    words += list(NUMBER_WORDS.values())
    scene = Scene("x", [ShapeObject("red", "circle", "small", "center"), ShapeObject("blue", "cross", "large", "top")], (0, 0, 0))
    lines = [" ".join(words), detailed_description(scene), *phrasings(scene)]
    lines += list(BRIEF_INSTRUCTIONS) + list(DETAILED_INSTRUCTIONS)
    lines += ["Is there an orange square in the image? Yes No yes no", "There is one object"]
    lines += ["How many objects are in the image? What colour is the Where is the relative to the",
              _options_text(list(COUNT_OPTIONS)), _options_text(list(RELATIONS)), " ".join(LETTERS),
              " ".join(w for syn in SHAPE_SYNONYMS.values() for w in syn)]
    return lines
