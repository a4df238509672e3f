"""optim.clip_mode balanced: per-loss clipping's gradient with one backward on the steps between measurements."""

from __future__ import annotations

import pytest
import torch

from cafe.config import ObjectiveConfig, OptimConfig
from cafe.distributed import DistEnv
from cafe.training.optim import LossBalance, backward_and_clip
from cafe.training.step import loss_terms
from cafe.training.strategy import DDPStrategy
from cafe.training.terms import Terms
from tests.conftest import make_adapter
from tests.test_shared_prefix import _batch


def _toy_terms(w: torch.Tensor, con_coeffs=(0.0, 30.0, 40.0)) -> Terms:
    terms = Terms(ObjectiveConfig(alpha_lm=1.0, alpha_con=1.0), separate=True)

    def term(name, coeffs):
        def run():
            loss = (w * torch.tensor(coeffs)).sum()
            terms.weighted(**{name: loss}).backward()
            return loss.detach()
        return run
    terms.update(lm=term("lm", (0.1, 0.0, 0.0)), con=term("con", con_coeffs))
    return terms


def test_balanced_applies_the_per_loss_gradient_between_measurements():
    w = torch.nn.Parameter(torch.ones(3))
    cfg = OptimConfig(clip_mode="balanced", clip_norm=1.0, balance_every=3)
    balance = LossBalance(cfg)
    per_loss = torch.tensor([0.1, 0.6, 0.8])  # language untouched, contrastive scaled to norm 1
    kinds = []
    for _ in range(4):
        w.grad = None
        _, norms = backward_and_clip(_toy_terms(w), [w], cfg, lambda p: None, balance)
        kinds.append(sorted(norms))
        torch.testing.assert_close(w.grad, per_loss)
    assert kinds == [["con", "lm"], ["total"], ["total"], ["con", "lm"]]  # measured at steps 1 and 4
    assert balance.scales == pytest.approx({"lm": 1.0, "con": 1 / 50})
    # the same terms under one global clip: the language share is starved
    w.grad = None
    backward_and_clip(_toy_terms(w), [w], OptimConfig(clip_mode="global", clip_norm=1.0), lambda p: None)
    assert w.grad[0] < 0.01


def test_a_grown_gradient_is_still_bounded():
    """Between measurements the contrastive gradient grows 10x: the global bound (clip_norm x terms) holds it."""
    w = torch.nn.Parameter(torch.ones(3))
    cfg = OptimConfig(clip_mode="balanced", clip_norm=1.0, balance_every=5)
    balance = LossBalance(cfg)
    backward_and_clip(_toy_terms(w), [w], cfg, lambda p: None, balance)
    w.grad = None
    backward_and_clip(_toy_terms(w, (0.0, 300.0, 400.0)), [w], cfg, lambda p: None, balance)
    assert float(w.grad.norm()) == pytest.approx(2.0, rel=1e-5)


def test_balanced_needs_its_state():
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="LossBalance"):
        backward_and_clip(_toy_terms(w), [w], OptimConfig(clip_mode="balanced"), lambda p: None)


def _grads(adapter) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in adapter.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("step", ["shared_prefix", "three_pass"])
def test_on_the_model_the_one_backward_step_equals_per_loss_clipping(params, step):
    """Same weights, same batch: the measuring step is per-loss clipping; the next (one backward of the
    re-weighted sum) applies the same gradient, so the two terms' applied norms keep per-loss clipping's ratio."""
    params.train.step = step
    params.train.optim.clip_mode, params.train.optim.clip_norm = "balanced", 0.05
    adapter = make_adapter(params)
    batch = _batch(params, 3)
    trained = [p for p in adapter.model.parameters() if p.requires_grad]
    balance = LossBalance(params.train.optim)
    _, norms = backward_and_clip(loss_terms(adapter, batch, params.train), trained, params.train.optim,
                                 lambda p: None, balance)
    assert set(norms) == {"lm", "con"} and all(n > 0.05 for n in norms.values())  # both really clipped
    per_loss = _grads(adapter)
    adapter.model.zero_grad(set_to_none=True)
    _, norms = backward_and_clip(loss_terms(adapter, batch, params.train), trained, params.train.optim,
                                 lambda p: None, balance)
    assert set(norms) == {"total"}
    balanced = _grads(adapter)
    assert balanced.keys() == per_loss.keys()
    for name, g in balanced.items():
        torch.testing.assert_close(g, per_loss[name], rtol=1e-4, atol=1e-7, msg=name)


def test_one_backward_through_the_model_except_every_k_steps(params):
    """Through DDPStrategy.step with the shared-prefix step: backwards reaching the vision tower per step."""
    params.train.step = "shared_prefix"
    params.train.optim.clip_mode, params.train.optim.balance_every = "balanced", 3
    adapter = make_adapter(params)
    strategy = DDPStrategy(adapter.model, params.train, DistEnv(), total_steps=8)
    tower = next(p for n, p in adapter.model.named_parameters() if n.startswith("model.vision_tower."))
    backwards, forwards = [], []
    tower.register_hook(lambda g: backwards.__setitem__(-1, backwards[-1] + 1))
    adapter.model.model.vision_tower.register_forward_hook(lambda m, a, o: forwards.__setitem__(-1, forwards[-1] + 1))
    batch = _batch(params, 3)
    for _ in range(4):
        backwards.append(0)
        forwards.append(0)
        strategy.step(loss_terms(adapter, batch, params.train, strategy.backward))
    assert forwards == [1, 1, 1, 1]
    assert backwards == [2, 1, 1, 2]
