"""The image cache: inputs built with it equal those built without it, for every family and for images of
different sizes; it stays within its bytes; what is saved is the processor as loaded."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cafe.models import FAMILIES, load_adapter
from cafe.models.image_cache import CachedImageProcessor
from tests.conftest import make_adapter


def _images(world, n):
    return [Image.open(world / "eval" / "images" / f"ret{i:06d}.png").convert("RGB") for i in range(n)]


def _pair(params, family):
    params.model.family = family
    plain = make_adapter(params)
    cached_cfg = params.model.model_copy(update={"image_cache_mb": 64})
    cached = make_adapter(params.model_copy(update={"model": cached_cfg}))
    return plain, cached


def _assert_equal(a, b):
    assert set(a.keys()) == set(b.keys())
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_inputs_equal_the_processors_own(params, world, family):
    plain, cached = _pair(params, family)
    images = _images(world, 3)
    # repeats, and a copy of an image that is a different object with the same pixels
    batch = [images[0], images[1], images[0], images[2].copy(), images[2]]
    prompts = ["What is in the image?"] * len(batch)
    answers = ["a red circle.", "a blue cross.", "a red circle.", "two objects.", "two objects."]
    for _ in range(2):  # the first call fills the cache, the second reads it
        _assert_equal(plain.lm_inputs(batch, prompts, answers), cached.lm_inputs(batch, prompts, answers))
        _assert_equal(plain.image_embed_inputs(batch), cached.image_embed_inputs(batch))
        _assert_equal(plain.generation_inputs(batch, prompts), cached.generation_inputs(batch, prompts))
    assert len(cached.image_processor) == 3
    assert cached.image_processor.misses == 3
    assert cached.image_processor.hits == 6 * len(batch) - 3
    assert plain.encode_images(batch).allclose(cached.encode_images(batch), atol=1e-6)


def test_images_of_different_sizes_are_joined_as_the_processor_joins_them(params, world):
    """LLaVA-OneVision's anyres crops a larger image into more patches; a batch pads the patch counts."""
    plain, cached = _pair(params, "llava_onevision")
    for adapter in (plain, cached):
        size = params.synth.image_size
        adapter.processor.image_processor.image_grid_pinpoints = [[size, size], [size, 2 * size], [2 * size, 2 * size]]
    small, = _images(world, 1)
    wide = small.resize((2 * small.width, small.height))
    large = small.resize((2 * small.width, 2 * small.height))
    batch = [small, large, wide, small]
    expected = plain.image_processor(batch, return_tensors="pt")
    got = cached.image_processor(batch, return_tensors="pt")
    assert len({int((p.flatten(1).abs().sum(1) > 0).sum()) for p in expected["pixel_values"]}) == 3
    _assert_equal(expected, got)


def test_the_cache_stays_within_its_bytes_and_drops_the_least_recently_used(params, world):
    plain = make_adapter(params)
    images = _images(world, 4)
    one = plain.image_processor([images[0]], return_tensors="pt")
    entry = sum(v.numel() * v.element_size() for v in one.values())
    cache = CachedImageProcessor(plain.image_processor, max_mb=2.5 * entry / 2**20)
    cache(images[:2], return_tensors="pt")
    cache([images[0]], return_tensors="pt")  # images[0] is now the most recent
    cache([images[2]], return_tensors="pt")  # so images[1] goes
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    hits = cache.hits
    cache([images[0], images[2]], return_tensors="pt")
    assert cache.hits == hits + 2
    cache([images[1]], return_tensors="pt")
    assert cache.hits == hits + 2  # a miss: it was dropped


def test_inputs_the_cache_cannot_key_go_to_the_processor_whole(params, world):
    plain = make_adapter(params)
    cache = CachedImageProcessor(plain.image_processor, max_mb=64)
    image = np.asarray(_images(world, 1)[0])
    out = cache(image, return_tensors="pt")  # one array, not a list of images
    _assert_equal(out, plain.image_processor(image, return_tensors="pt"))
    assert len(cache) == 0
    assert cache.crop_size == plain.image_processor.crop_size  # what the processor reads is the inner one's
    with pytest.raises(AttributeError):
        CachedImageProcessor.__new__(CachedImageProcessor).anything


def test_a_model_saved_with_the_cache_on_has_the_processor_as_loaded(params, world, tmp_path):
    plain, cached = _pair(params, "llava_onevision")
    cached.image_embed_inputs(_images(world, 2))
    plain.save_pretrained(tmp_path / "plain")
    cached.save_pretrained(tmp_path / "cached")
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (tmp_path / "plain" / name).exists():
            assert json.loads((tmp_path / "cached" / name).read_text()) == json.loads((tmp_path / "plain" / name).read_text())
    reloaded = load_adapter(tmp_path / "cached", params.prompts, params.model)
    assert not isinstance(reloaded.image_processor, CachedImageProcessor)
    _assert_equal(reloaded.image_embed_inputs(_images(world, 2)), plain.image_embed_inputs(_images(world, 2)))
