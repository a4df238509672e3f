"""The shared-prefix step equals the three-pass reference: losses and gradients (fp32), with and without mined
hard negatives."""

from __future__ import annotations

import logging

import pytest
import torch

from cafe.models import tuning
from cafe.training import shared_prefix
from cafe.training.step import loss_terms
from cafe.data.samples import collate
from tests.conftest import make_adapter, pairs


def _batch(params, n: int) -> dict:
    """``n`` pairs whose answers have different lengths (so rows pad differently)."""
    data = pairs(params)
    chosen, lengths = [], set()
    for i in range(len(data)):
        length = len(data[i][0].answer.split())
        if length not in lengths or len(lengths) >= 3:
            chosen.append(i)
            lengths.add(length)
        if len(chosen) == n:
            break
    assert len(lengths) >= 2, "the fixture world should have answers of several lengths"
    return collate([data[i] for i in chosen])


def _with_negatives(params, batch: dict, n: int = 2) -> dict:
    """``batch`` with ``n`` hard negatives per sample taken from pairs outside it (captions and images of other
    lengths, every third image wide), as ``collate`` lays out mined ones; sample 1's last slot is a padded one."""
    data = pairs(params)
    others = [data[i] for i in range(len(data) - 1, len(data) - 1 - n * len(batch["images"]), -1)]
    mask = torch.ones(len(batch["images"]), n, dtype=torch.bool)
    mask[1, -1] = False
    size = params.synth.image_size
    images = [image.resize((size, size // 2)) if k % 3 == 1 else image for k, (_, image) in enumerate(others)]
    return dict(batch, negative_captions=[s.caption for s, _ in others], negative_images=images,
                negative_mask=mask)


def _run(adapter, batch, cfg) -> tuple[dict, dict]:
    adapter.model.zero_grad(set_to_none=True)
    losses = {name: float(run()) for name, run in loss_terms(adapter, batch, cfg).items()}
    grads = {n: p.grad.detach().clone() for n, p in adapter.model.named_parameters() if p.grad is not None}
    return losses, grads


def _compare(adapter, batch, cfg) -> None:
    cfg.step = "three_pass"
    ref_losses, ref_grads = _run(adapter, batch, cfg)
    cfg.step = "shared_prefix"
    assert shared_prefix.fallback_reason(adapter, cfg, shared_prefix.plain_backward) is None  # really packed
    losses, grads = _run(adapter, batch, cfg)
    assert losses.keys() == ref_losses.keys()
    for name in losses:
        assert losses[name] == pytest.approx(ref_losses[name], rel=1e-5, abs=1e-6), name
    assert grads.keys() == ref_grads.keys()
    # fp32 sums in another order: relative to each tensor's norm, with a floor for the gradients that are
    # zero in exact arithmetic (attention key biases)
    for name, g in grads.items():
        error, scale = float((g - ref_grads[name]).norm()), float(ref_grads[name].norm())
        assert error <= 1e-5 * scale + 1e-5, f"{name}: gradient error {error:.1e} (norm {scale:.1e})"


@pytest.mark.parametrize("average", ["token", "sample"])
@pytest.mark.parametrize("family", ["llava_onevision", "llava", "qwen2_vl"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_equal_to_three_pass(params, side, family, average):
    params.model.embed_padding_side, params.model.family = side, family
    params.train.objective.lm_average = average
    adapter = make_adapter(params)
    _compare(adapter, _batch(params, 4), params.train)


def test_equal_under_global_clipping_one_backward(params):
    """clip_mode global: one backward of the weighted sum; the terms' losses still reported apart."""
    params.train.optim.clip_mode = "global"
    _compare(make_adapter(params), _batch(params, 3), params.train)


@pytest.mark.parametrize("family,side,average", [
    ("llava_onevision", "left", "token"), ("llava_onevision", "left", "sample"),
    ("llava_onevision", "right", "sample"), ("llava", "right", "sample"), ("qwen2_vl", "left", "sample")])
def test_equal_with_gradient_cache(params, family, side, average):
    """Chunks of 2 and 1 (5 samples, chunk 2): a sample's weight comes from its own answer, the normaliser
    from the whole batch, in every chunk."""
    params.model.family, params.model.embed_padding_side = family, side
    params.train.optim.clip_mode = "global"
    params.train.grad_cache_chunk = 2
    params.train.objective.lm_average = average
    _compare(make_adapter(params), _batch(params, 5), params.train)


def test_per_sample_averaging_is_not_per_token(params):
    """Control: on answers of different lengths the two averages differ, in the packed step as in three-pass,
    so the exactness tests above can tell a packed step that ignored ``lm_average``."""
    adapter = make_adapter(params)
    batch = _batch(params, 4)
    params.train.step = "shared_prefix"
    params.train.objective.alpha_con = 1e-6  # the language gradient only (both terms must be on to pack)
    grads = {}
    for average in ("token", "sample"):
        params.train.objective.lm_average = average
        grads[average] = torch.cat([g.flatten() for g in _run(adapter, batch, params.train)[1].values()])
    error = float((grads["sample"] - grads["token"]).norm() / grads["token"].norm())
    assert error > 100 * 1e-5, error  # 100x the exactness tests' tolerance


def test_per_sample_averaging_weighs_each_answer_by_its_length(params):
    """The packed language loss with ``sample`` is the mean over samples of each sample's token mean,
    computed here one sample at a time from the packed rows' own token losses."""
    adapter = make_adapter(params)
    batch = _batch(params, 4)
    packed = shared_prefix.pack(adapter, batch["images"], batch["prompts"], batch["answers"])
    with torch.no_grad():
        total, _ = shared_prefix.packed_forward(adapter, packed, "sample")
        means = []
        for i in range(len(batch["images"])):
            row = {k: v[i:i + 1] for k, v in packed.items() if k != "pixels"}  # 1-D positions: [B, L]
            row["pixels"] = {k: v[i:i + 1] for k, v in packed["pixels"].items()}
            summed, _ = shared_prefix.packed_forward(adapter, row, "token")
            means.append(float(summed) / int((packed["targets"][i] != -100).sum()))
    assert float(total) == pytest.approx(sum(means), rel=1e-5)


def test_equal_with_lora_and_soft_prompt(params):
    params.model.lora.enabled, params.model.lora.r, params.model.soft_prompt.tokens = True, 4, 3
    params.model.lora.dropout = 0.0  # dropout masks differ between any two runs, packed or not
    adapter = make_adapter(params)
    tuning.setup(adapter, params.model, None, fresh=True)
    assert adapter.soft_prompt is not None and adapter.peft is not None
    _compare(adapter, _batch(params, 3), params.train)


def test_vision_tower_runs_once_and_never_for_text(params):
    adapter = make_adapter(params)
    calls = []
    adapter.model.model.vision_tower.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    adapter.embed(adapter.text_embed_inputs(["a red circle", "two blue squares"]))
    assert calls == []
    batch = _batch(params, 3)
    for step, expected in (("three_pass", 2), ("shared_prefix", 1)):
        params.train.step = step
        calls.clear()
        for run in loss_terms(adapter, batch, params.train).values():
            run()
        assert len(calls) == expected, step


def test_a_leaking_mask_is_caught(params, monkeypatch):
    """Negative control: letting the embedding prompt see the language continuation changes the numbers."""
    adapter = make_adapter(params)
    batch = _batch(params, 3)
    cfg = params.train
    cfg.step = "shared_prefix"
    packed = shared_prefix.pack(adapter, batch["images"], batch["prompts"], batch["answers"])
    _, good = shared_prefix.packed_forward(adapter, packed)
    reference = adapter.embed(adapter.image_embed_inputs(batch["images"]))
    torch.testing.assert_close(good, reference, rtol=1e-5, atol=1e-5)
    leaky = dict(packed, segment=packed["segment"].clamp(max=shared_prefix.PREFIX))  # plain causal
    _, bad = shared_prefix.packed_forward(adapter, leaky)
    assert (bad - reference).abs().max() > 1e-3


@pytest.mark.parametrize("side", ["left", "right"])
def test_qwen2_vl_images_of_different_sizes(params, side):
    """Dynamic resolution: each row has its own image grid, so its own M-RoPE positions and prefix length."""
    params.model.embed_padding_side, params.model.family = side, "qwen2_vl"
    adapter = make_adapter(params)
    batch = _batch(params, 4)
    size = params.synth.image_size
    batch["images"] = [image.resize(shape) for image, shape in
                       zip(batch["images"], [(size, size), (size, size // 2), (size // 2, size), (size // 2, size // 2)])]
    packed = shared_prefix.pack(adapter, batch["images"], batch["prompts"], batch["answers"])
    assert packed["position_ids"].shape[0] == 3  # (time, height, width)
    assert len({tuple(g.tolist()) for g in packed["pixels"]["image_grid_thw"]}) == 4  # wide and tall differ too
    _compare(adapter, batch, params.train)


def test_qwen2_vl_needs_its_3d_positions(params):
    """Negative control: the same packed row with plain 1-D positions gives other embeddings."""
    params.model.family = "qwen2_vl"
    adapter = make_adapter(params)
    batch = _batch(params, 2)
    packed = shared_prefix.pack(adapter, batch["images"], batch["prompts"], batch["answers"])
    with torch.no_grad():
        _, good = shared_prefix.packed_forward(adapter, packed)
        reference = adapter.embed(adapter.image_embed_inputs(batch["images"]))
        length = packed["input_ids"].shape[1]
        flat = dict(packed, position_ids=torch.arange(length).expand(len(batch["images"]), -1))
        _, bad = shared_prefix.packed_forward(adapter, flat)
    torch.testing.assert_close(good, reference, rtol=1e-5, atol=1e-5)
    assert (bad - reference).abs().max() > 1e-3


def test_family_not_packable_falls_back(params, caplog, monkeypatch):
    params.model.family = "qwen2_vl"
    monkeypatch.setattr(shared_prefix, "PACKABLE", ("llava_onevision", "llava"))
    adapter = make_adapter(params)
    batch = _batch(params, 2)
    params.train.step = "three_pass"
    reference, _ = _run(adapter, batch, params.train)
    params.train.step = "shared_prefix"
    shared_prefix.warn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger=shared_prefix.log.name):
        losses, _ = _run(adapter, batch, params.train)
        _run(adapter, batch, params.train)
    assert "falls back to three_pass" in caplog.text and "qwen2_vl" in caplog.text
    assert caplog.text.count("falls back to three_pass") == 1  # said once, not at every step
    assert losses == reference


def test_gradient_cache_with_per_loss_clipping_falls_back(params, caplog):
    params.train.grad_cache_chunk, params.train.step = 2, "shared_prefix"
    adapter = make_adapter(params)
    shared_prefix.warn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger=shared_prefix.log.name):
        terms = loss_terms(adapter, _batch(params, 4), params.train)
    assert "per-loss clipping" in caplog.text and set(terms) == {"lm", "con"}


def test_flex_attention_block_mask_matches_the_float_mask(params):
    """The CUDA route (FlexAttention + BlockMask from the same segments): its forward, checked on CPU."""
    adapter = make_adapter(params)
    batch = _batch(params, 3)
    packed = shared_prefix.pack(adapter, batch["images"], batch["prompts"], batch["answers"])
    with torch.no_grad():
        lm, image = shared_prefix.packed_forward(adapter, packed)
        adapter.model.set_attn_implementation("flex_attention")
        flex_lm, flex_image = shared_prefix.packed_forward(adapter, packed)
    assert float(flex_lm) == pytest.approx(float(lm), rel=1e-5)
    torch.testing.assert_close(flex_image, image, rtol=1e-5, atol=1e-5)


def test_equal_under_gradient_checkpointing(params):
    """One forward, no KV cache: checkpointed layers recompute it, for both backwards of per-loss clipping."""
    adapter = make_adapter(params)
    adapter.model.gradient_checkpointing_enable()
    _compare(adapter, _batch(params, 3), params.train)


@pytest.mark.parametrize("clip_mode", ["per_loss", "global"])
def test_optimizer_step_through_the_strategy_is_the_same(params, clip_mode):
    """Through DDPStrategy.step (per-term clipping, one update): the same norms and the same weights after."""
    from cafe.distributed import DistEnv
    from cafe.training.strategy import DDPStrategy

    params.train.optim.clip_mode = clip_mode
    batch = _batch(params, 3)
    results = []
    for step in ("three_pass", "shared_prefix"):
        params.train.step = step
        adapter = make_adapter(params)
        strategy = DDPStrategy(adapter.model, params.train, DistEnv(), total_steps=4)
        losses, norms = strategy.step(loss_terms(adapter, batch, params.train, strategy.backward))
        results.append((norms, {n: p.detach().clone() for n, p in adapter.model.named_parameters()}))
    (ref_norms, ref_weights), (norms, weights) = results
    assert norms.keys() == ref_norms.keys()
    for name in norms:
        assert norms[name] == pytest.approx(ref_norms[name], rel=1e-5)
    for name, w in weights.items():
        torch.testing.assert_close(w, ref_weights[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["llava_onevision", "llava", "qwen2_vl"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_equal_to_three_pass_with_negatives(params, side, family):
    """Mined negatives in both denominators, hardness-weighted: negative texts in the text pass, negative
    images in their own image pass; per-loss clipping (two backwards)."""
    params.model.embed_padding_side, params.model.family = side, family
    params.train.objective.hardness = 1.5
    adapter = make_adapter(params)
    _compare(adapter, _with_negatives(params, _batch(params, 4)), params.train)


@pytest.mark.parametrize("hardness", [0.0, 1.5])
def test_equal_with_negatives_one_backward(params, hardness):
    params.train.optim.clip_mode, params.train.objective.hardness = "global", hardness
    _compare(make_adapter(params), _with_negatives(params, _batch(params, 3), n=3), params.train)


@pytest.mark.parametrize("family,side,average", [
    ("llava_onevision", "left", "token"), ("llava", "right", "sample"), ("qwen2_vl", "left", "sample"),
    ("qwen2_vl", "right", "token")])
def test_equal_with_negatives_and_gradient_cache(params, family, side, average):
    """Chunks of 2, 2 and 1: each chunk re-embeds its own samples' negatives against the cached gradients."""
    params.model.family, params.model.embed_padding_side = family, side
    params.train.optim.clip_mode, params.train.grad_cache_chunk = "global", 2
    params.train.objective.lm_average, params.train.objective.hardness = average, 1.0
    _compare(make_adapter(params), _with_negatives(params, _batch(params, 5)), params.train)


def test_negatives_change_the_packed_step(params):
    """Control: the packed step really uses the negatives (its contrastive loss and gradients move), and runs
    the vision tower once more, for the negative images only."""
    adapter = make_adapter(params)
    batch = _batch(params, 3)
    params.train.step = "shared_prefix"
    plain, plain_grads = _run(adapter, batch, params.train)
    calls = []
    adapter.model.model.vision_tower.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    mined, mined_grads = _run(adapter, _with_negatives(params, batch), params.train)
    assert len(calls) == 2
    assert mined["con"] > plain["con"] + 1e-3 and mined["lm"] == pytest.approx(plain["lm"], rel=1e-6)
    flat = lambda g: torch.cat([v.flatten() for v in g.values()])  # noqa: E731
    assert float((flat(mined_grads) - flat(plain_grads)).norm()) > 1e-3 * float(flat(plain_grads).norm())
