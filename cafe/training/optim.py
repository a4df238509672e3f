"""Optimizer, schedule and gradient clipping for CAFe.

Two learning rates (paper 4.1: vision tower vs projector + LLM), linear warm-up then cosine decay, and the
loss balance (``optim.clip_mode``):

- ``per_loss``: the contrastive and language gradients are clipped separately and then added, so a large
  alpha_con cannot eat the whole clipping budget and starve the language term. Each term needs its own
  backward (the shared-prefix step back-propagates its one graph twice).
- ``balanced`` (:class:`LossBalance`): the same protection with one backward on most steps: per-loss clipping
  runs every ``optim.balance_every`` steps and its clip factors are applied as loss weights in between.
- ``global``: one clip of the sum; ``none``.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from cafe.config import OptimConfig
from cafe.training.terms import Terms

VISION_PREFIXES = ("model.vision_tower.", "vision_tower.", "model.visual.", "visual.")
# Qwen2-VL's projector (the patch merger) lives inside its vision module and trains at the LLM's rate
PROJECTOR_IN_VISION = ("model.visual.merger.", "visual.merger.")


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        vision = name.startswith(VISION_PREFIXES) and not name.startswith(PROJECTOR_IN_VISION)
        decay = param.ndim >= 2
        groups.setdefault((vision, decay), []).append(param)
    return [
        {"params": params, "lr": cfg.lr_vision if vision else cfg.lr,
         "weight_decay": cfg.weight_decay if decay else 0.0, "name": f"{'vision' if vision else 'llm'}{'' if decay else '_nodecay'}"}
        for (vision, decay), params in sorted(groups.items())
    ]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    fused = torch.cuda.is_available() and next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, cfg), betas=cfg.betas, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, min_lr_rate=cfg.min_lr_ratio
    )


class LossBalance:
    """``optim.clip_mode: balanced``: per-loss clipping's protection of the language term, one backward on most steps.

    Per-loss clipping applies ``s_i g_i`` with ``s_i = min(1, clip_norm / |g_i|)`` for each term's gradient
    ``g_i``, which needs every term's gradient apart. Here every ``balance_every``-th step (and the first, also
    after a resume) is a per-loss clipped step that keeps its factors ``s_i``; the steps between multiply each
    term's weight by its kept ``s_i`` (``Terms.scales``, applied in ``cafe.objective.combine``), back-propagate
    the sum once and clip it globally at ``clip_norm`` times the number of terms (the bound the per-loss sum
    obeys), which only acts when a gradient grew a lot since the last measurement. Cost: one extra backward
    every ``balance_every`` steps."""

    def __init__(self, cfg: OptimConfig):
        self.cfg = cfg
        self.steps = 0
        self.scales: dict[str, float] = {}

    @property
    def measuring(self) -> bool:
        """Whether the next step runs per-loss clipped (the terms apart) to renew the factors."""
        return not self.scales or self.steps % self.cfg.balance_every == 0

    def step(self, terms: Terms, params: list[torch.nn.Parameter],
             sync: Callable[[list[torch.nn.Parameter]], None]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        if not isinstance(terms, Terms):
            raise TypeError("optim.clip_mode balanced needs the step's Terms (cafe.training.step.loss_terms)")
        measuring = self.measuring
        self.steps += 1
        if measuring:
            terms.separate, terms.scales = True, {}
            losses, norms = _clip_per_loss(terms, params, self.cfg.clip_norm, sync)
            self.scales = {name: min(1.0, self.cfg.clip_norm / max(norm, 1e-12)) for name, norm in norms.items()}
            return losses, norms
        terms.separate, terms.scales = False, dict(self.scales)
        losses = {name: run() for name, run in terms.items()}
        sync(params)
        bound = self.cfg.clip_norm * len(terms)
        return losses, {"total": float(torch.nn.utils.clip_grad_norm_(params, bound))}


def _clip_per_loss(terms: dict[str, Callable[[], torch.Tensor]], params: list[torch.nn.Parameter], clip_norm: float,
                   sync: Callable[[list[torch.nn.Parameter]], None]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Run the terms one by one with the gradients cleared in between, clip each, add them up."""
    losses: dict[str, torch.Tensor] = {}
    norms: dict[str, float] = {}
    accumulated: list[torch.Tensor | None] = [None] * len(params)
    for name, run in terms.items():
        for p in params:
            p.grad = None
        losses[name] = run()
        sync(params)
        norms[name] = float(torch.nn.utils.clip_grad_norm_(params, clip_norm))
        for i, p in enumerate(params):
            if p.grad is not None:
                accumulated[i] = p.grad if accumulated[i] is None else accumulated[i].add_(p.grad)
    for p, g in zip(params, accumulated):
        p.grad = g
    return losses, norms


def backward_and_clip(terms: dict[str, Callable[[], torch.Tensor]], params: list[torch.nn.Parameter],
                      cfg: OptimConfig, sync: Callable[[list[torch.nn.Parameter]], None],
                      balance: LossBalance | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Run each term's forward + backward (see ``cafe.training.step``), synchronise gradients across ranks
    with ``sync``, clip as configured (``balanced`` needs the strategy's ``balance``). Returns the terms'
    unweighted losses and the pre-clip gradient norm of each term ("per_loss", measuring steps of "balanced")
    or of their sum ("global", the other steps of "balanced")."""
    if len(terms) > 1 and cfg.clip_mode == "balanced":
        if balance is None:
            raise ValueError("optim.clip_mode balanced needs a LossBalance (kept by the strategy across steps)")
        return balance.step(terms, params, sync)
    if cfg.clip_mode not in ("per_loss", "balanced") or len(terms) == 1:
        losses = {name: run() for name, run in terms.items()}
        sync(params)
        if cfg.clip_mode == "none":
            return losses, {}
        return losses, {"total": float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm))}
    return _clip_per_loss(terms, params, cfg.clip_norm, sync)
