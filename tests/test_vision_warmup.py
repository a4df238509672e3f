"""The base model's vision warm-up: labels read back from the detailed descriptions, and a warm-up that
trains the vision tower alone."""

import random

import torch

from cafe.data import shapes
from cafe.data.samples import Sample, load_instruction_samples
from cafe.training.vision_warmup import ATTRIBUTES, cell_labels, warm_up_vision
from tests.conftest import make_adapter


def test_detailed_descriptions_give_back_every_object():
    rng = random.Random(3)
    for i in range(300):
        scene = shapes.sample_scene(rng, f"s{i}", [0.2, 0.4, 0.4])
        assert shapes.objects_from_description(shapes.detailed_description(scene)) == scene.objects
    assert shapes.objects_from_description("a large red circle and a small blue cross.") == []


def test_cell_labels_mark_each_object_in_its_cell_and_the_rest_empty():
    text = "There are two objects on a grey background. A small blue cross is at the top left. A large red circle is in the center."
    samples = [Sample("a-detail", "a.png", "Describe the image in detail.", text),
               Sample("a-brief", "a.png", "Describe the image briefly.", "a small blue cross.")]
    images, labels = cell_labels(samples)
    assert images == ["a.png"] and labels.shape == (1, 9, 3)
    empty = [len(v) for v in ATTRIBUTES.values()]
    assert labels[0, 0].tolist() == [list(shapes.COLOURS).index("blue"), shapes.SHAPES.index("cross"), 0]
    assert labels[0, 4].tolist() == [list(shapes.COLOURS).index("red"), shapes.SHAPES.index("circle"), 1]
    assert all(labels[0, c].tolist() == empty for c in (1, 2, 3, 5, 6, 7, 8))


def test_warm_up_trains_the_vision_tower_only(params, world):
    adapter = make_adapter(params)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    samples = load_instruction_samples(world / "train" / "instructions.json")
    summary = warm_up_vision(adapter, samples, steps=4, lr=1e-3, batch_size=8, progress=False)
    assert set(summary) == {"colour_accuracy", "shape_accuracy", "size_accuracy", "seconds"}
    for name, p in adapter.model.named_parameters():
        changed = not torch.equal(p, before[name])
        if name.startswith("model.vision_tower.") and "post_layernorm" not in name:
            assert changed, name
        elif not name.startswith("model.vision_tower."):
            assert not changed, name
