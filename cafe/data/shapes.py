"""The shapes world: the embedded dataset (`cafe synth`).

Images of 1-3 coloured shapes (colour, shape, size, position in a 3x3 grid), deterministic by seed, written
in the public formats the real pipeline reads:

- training data as LLaVA-OneVision instruction records (brief captions, detailed descriptions, yes/no
  object questions), a JSON list plus an image folder;
- held-out evaluation sets from another seed: a retrieval set in the Karpathy-split format used for
  Flickr30K/COCO (five different phrasings per image), POPE-style yes/no probes (JSON lines), and the
  ground-truth objects of every evaluation image.

40 object types x 2 sizes x 9 cells give enough distinct scenes that chance retrieval on 500 images is
0.2%, and a caption can be right or wrong object by object.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from cafe.config import SynthConfig

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
        _join([_article(f"{o.size} {o.colour} {o.shape}") for o in objs]) + ".",
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


def instruction_records(scene: Scene, image: str, rng: random.Random) -> list[dict]:
    """LLaVA-OneVision records for one training image: brief, detailed and yes/no kinds."""
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
    return records


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _scenes(rng: random.Random, prefix: str, count: int, weights: list[float]) -> list[Scene]:
    return [sample_scene(rng, f"{prefix}{i:06d}", weights) for i in range(count)]


def generate(cfg: SynthConfig) -> dict[str, int]:
    """Write the whole shapes world under ``cfg.out``; returns counts for the summary."""
    out = Path(cfg.out)
    train_dir, eval_dir = out / "train", out / "eval"
    (train_dir / "images").mkdir(parents=True, exist_ok=True)
    (eval_dir / "images").mkdir(parents=True, exist_ok=True)

    rng = random.Random(cfg.seed)
    records: list[dict] = []
    for scene in _scenes(rng, "train", cfg.train_images, cfg.object_count_weights):
        image = f"images/{scene.id}.png"
        render(scene, cfg.image_size, rng).save(train_dir / image)
        records.extend(instruction_records(scene, image, rng))
    _write_json(train_dir / "instructions.json", records)

    rng = random.Random(cfg.eval_seed)
    retrieval = _scenes(rng, "ret", cfg.retrieval_images, cfg.object_count_weights)
    probes = _scenes(rng, "probe", cfg.probe_images, cfg.object_count_weights)
    annotations: dict[str, list[dict]] = {}
    for scene in retrieval + probes:
        render(scene, cfg.image_size, rng).save(eval_dir / "images" / f"{scene.id}.png")
        annotations[f"{scene.id}.png"] = [asdict(o) for o in scene.objects]

    karpathy = {"dataset": "shapes", "images": [
        {"filename": f"{s.id}.png", "filepath": "images", "imgid": i, "split": "test",
         "sentences": [{"raw": text, "sentid": 5 * i + j} for j, text in enumerate(phrasings(s))]}
        for i, s in enumerate(retrieval)]}
    _write_json(eval_dir / "retrieval_karpathy.json", karpathy)
    _write_json(eval_dir / "annotations.json", annotations)

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
    tmp = eval_dir / "pope.jsonl.tmp"
    tmp.write_text("".join(json.dumps(line) + "\n" for line in pope_lines))
    tmp.replace(eval_dir / "pope.jsonl")
    return {"train_images": cfg.train_images, "instruction_records": len(records),
            "retrieval_images": len(retrieval), "retrieval_captions": 5 * len(retrieval),
            "probe_questions": len(pope_lines)}


def vocabulary_corpus() -> list[str]:
    """Every word the shapes world can say, for training the tiny tokenizer."""
    words = list(COLOURS) + list(SHAPES) + list(SIZES) + [p for pos in POSITIONS for p in pos.split()]
    words += list(NUMBER_WORDS.values())
    scene = Scene("x", [ShapeObject("red", "circle", "small", "center"), ShapeObject("blue", "cross", "large", "top")], (0, 0, 0))
    lines = [" ".join(words), detailed_description(scene), *phrasings(scene)]
    lines += list(BRIEF_INSTRUCTIONS) + list(DETAILED_INSTRUCTIONS)
    lines += ["Is there an orange square in the image? Yes No yes no", "There is one object"]
    return lines
