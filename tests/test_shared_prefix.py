"""The shared-prefix step equals the three-pass reference: losses and gradients (fp32)."""

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


def _run(adapter, batch, cfg) -> tuple[dict, dict]:
    adapter.model.zero_grad(set_to_none=True)
    losses = {name: float(run()) for name, run in loss_terms(adapter, batch, cfg).items()}
    grads = {n: p.grad.detach().clone() for n, p in adapter.model.named_parameters() if p.grad is not None}
    return losses, grads


def _compare(adapter, batch, cfg) -> None:
    cfg.step = "three_pass"
    ref_losses, ref_grads = _run(adapter, batch, cfg)
    cfg.step = "shared_prefix"
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


@pytest.mark.parametrize("side", ["left", "right"])
def test_equal_to_three_pass(params, side):
    params.model.embed_padding_side = side
    adapter = make_adapter(params)
    _compare(adapter, _batch(params, 4), params.train)


def test_equal_under_global_clipping_one_backward(params):
    """clip_mode global: one backward of the weighted sum; the terms' losses still reported apart."""
    params.train.optim.clip_mode = "global"
    _compare(make_adapter(params), _batch(params, 3), params.train)


def test_equal_with_gradient_cache(params):
    params.train.optim.clip_mode = "global"
    params.train.grad_cache_chunk = 2
    _compare(make_adapter(params), _batch(params, 4), params.train)
