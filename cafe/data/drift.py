"""Drifted shapes worlds for the drift scenario: the training distribution and two shifts of it.

- ``in_distribution``: 1-2 large objects of the *seen* (colour, shape) kinds on a flat grey background;
- ``harmless``: the same scenes on new backgrounds (a diagonal gradient with fine pixel noise instead of the flat
  grey training always had): same vocabulary, same objects, so retrieval should not suffer;
- ``harmful``: 3 *small* objects of the *held-out* kinds (combinations of colour and shape never trained on)
  — the captions use known words, but the model never learned these combinations or this size.

Each world is written like the evaluation sets (images + a Karpathy-split JSON, five phrasings per image),
and :func:`training_pairs` lists its (image, caption) pairs for an instruction folder
(:func:`cafe.data.pair_folder.write_pair_folder`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

from cafe.data.shapes import COLOURS, POSITIONS, SHAPES, Scene, ShapeObject, phrasings, render

KINDS = ("in_distribution", "harmless", "harmful")
ALL_KINDS = [(c, s) for c in COLOURS for s in SHAPES]
# every third (colour, shape) combination is never trained on
HELD_OUT = [k for i, k in enumerate(ALL_KINDS) if i % 3 == 0]
SEEN = [k for k in ALL_KINDS if k not in HELD_OUT]
GRADIENT, NOISE = 14, 4  # the harmless shift's background: gradient amplitude and pixel noise (grey levels)


def sample_scene(rng: random.Random, kind: str, scene_id: str) -> Scene:
    if kind not in KINDS:
        raise ValueError(f"unknown traffic kind {kind!r}; known: {KINDS}")
    harmful = kind == "harmful"
    count = 3 if harmful else rng.choice([1, 2])
    kinds = rng.sample(HELD_OUT if harmful else SEEN, count)
    cells = sorted(rng.sample(range(len(POSITIONS)), count))
    objects = [ShapeObject(c, s, "small" if harmful else "large", POSITIONS[cell]) for (c, s), cell in zip(kinds, cells)]
    grey = rng.randint(105, 150)
    return Scene(scene_id, objects, (grey, grey, grey))


def render_scene(scene: Scene, kind: str, size: int, rng: random.Random) -> Image.Image:
    img = render(scene, size, rng)
    if kind != "harmless":
        return img
    # a new background behind the same objects: a diagonal gradient of +-GRADIENT around the scene's grey,
    # with fine pixel noise (training backgrounds are flat); object pixels are left as they are
    px = img.load()
    base = scene.background[0]
    slope = rng.choice([-1, 1]) * GRADIENT
    for y in range(size):
        for x in range(size):
            if px[x, y] == scene.background:
                shade = int(base + slope * ((x + y) / (2 * size - 2) - 0.5) * 2 + rng.randint(-NOISE, NOISE))
                px[x, y] = (shade, shade, shade)
    return img


def write_world(out: str | Path, kind: str, images: int, seed: int, size: int = 64) -> Path:
    """``images`` scenes of ``kind`` -> ``out/images/*.png`` + ``out/retrieval_karpathy.json``; returns the JSON."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{kind}:{seed}")
    entries = []
    for i in range(images):
        scene = sample_scene(rng, kind, f"{kind[:4]}{seed:03d}x{i:05d}")
        render_scene(scene, kind, size, rng).save(out / "images" / f"{scene.id}.png")
        entries.append({"filename": f"{scene.id}.png", "filepath": "images", "imgid": i, "split": "test",
                        "sentences": [{"raw": t, "sentid": 5 * i + j} for j, t in enumerate(phrasings(scene))]})
    path = out / "retrieval_karpathy.json"
    path.write_text(json.dumps({"dataset": f"shapes-{kind}", "images": entries}))
    return path


def training_pairs(karpathy: str | Path, per_image: int = 5) -> list[dict]:
    """(``id``, absolute ``image``, ``caption``) pairs: up to ``per_image`` phrasings per image."""
    data = json.loads(Path(karpathy).read_text())
    root = Path(karpathy).parent
    return [{"id": f"{entry['filename']}-{s['sentid']}", "caption": s["raw"],
             "image": str((root / entry["filepath"] / entry["filename"]).resolve())}
            for entry in data["images"] for s in entry["sentences"][:per_image]]
