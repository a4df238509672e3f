"""The base model's vision warm-up: labels read back from the detailed descriptions, and a warm-up that
trains the vision tower alone."""

import random

import torch

from cafe.data import shapes
from cafe.data.samples import Sample, load_instruction_samples
from cafe.models import load_adapter
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


def test_warm_up_to_words_trains_tower_and_projector_towards_the_word_embeddings(params, world):
    adapter = make_adapter(params)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    samples = load_instruction_samples(world / "train" / "instructions.json")
    first = warm_up_vision(make_adapter(params), samples, steps=1, lr=1e-3, batch_size=16, progress=False, target="words")
    summary = warm_up_vision(adapter, samples, steps=60, lr=3e-3, batch_size=16, progress=False, target="words")
    assert summary["colour_accuracy"] > max(0.5, first["colour_accuracy"])  # it learns to name colours
    for name, p in adapter.model.named_parameters():
        changed = not torch.equal(p, before[name])
        if name.startswith("model.multi_modal_projector.") or (
                name.startswith("model.vision_tower.") and "post_layernorm" not in name):
            assert changed, name
        elif not name.startswith("model.vision_tower."):
            assert not changed, name  # the word embeddings are the fixed targets


def test_pretraining_keeps_the_frozen_parts_as_the_warm_up_left_them(params, world, tmp_path):
    from cafe.distributed import DistEnv
    from cafe.training.pretrain import build_base, pretrain

    p = params.pretrain
    p.data = str(world / "train" / "instructions.json")
    p.vision_steps, p.vision_batch_size, p.steps, p.batch_size, p.save_every = 3, 8, 3, 8, 0
    samples = load_instruction_samples(p.data)
    p.frozen = ["vision_tower", "projector"]
    base = build_base(params, samples, progress=False)[0]
    start = {n: t.detach().clone() for n, t in base.model.named_parameters()}
    vision = {n for n in start if base.part_of(n) in ("vision_tower", "projector")}
    assert any(n.startswith("model.multi_modal_projector.") for n in vision)
    # frozen, not merely at learning rate 0: the language-only steps compute no gradients there
    assert not any(t.requires_grad for n, t in base.model.named_parameters() if n in vision)
    assert all(t.requires_grad for n, t in base.model.named_parameters() if n not in vision)
    changed = {}
    for frozen in (["vision_tower", "projector"], []):
        p.frozen, p.output = frozen, str(tmp_path / f"base-{len(frozen)}")
        trained = dict(load_adapter(pretrain(params, DistEnv(), resume=False), params.prompts, params.model)
                       .model.named_parameters())
        changed[len(frozen)] = {n for n in start if not torch.equal(trained[n], start[n])}
    # the language-only steps start from the warmed-up model and leave the frozen parts as they are
    assert not changed[2] & vision
    assert any(n.startswith("model.language_model.") for n in changed[2])
    assert changed[0] & vision, "with nothing frozen the same steps move tower and projector (the control)"


def test_words_target_names_the_words_a_tokenizer_lacks(params, world):
    import pytest

    from cafe.models import build_tiny

    adapter = build_tiny(["a small red circle"], params.synth.image_size, params.model.tiny, params.prompts, params.model)
    samples = load_instruction_samples(world / "train" / "instructions.json")
    with pytest.raises(ValueError, match=r"no single token for .*'square'.*'background'.*vision_target=heads"):
        warm_up_vision(adapter, samples, steps=1, lr=1e-3, batch_size=4, progress=False, target="words")
