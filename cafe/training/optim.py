"""Optimizer, schedule and gradient clipping for CAFe.

Two learning rates (paper 4.1: vision tower vs projector + LLM), linear warm-up then cosine decay, and
clipping per loss term: the contrastive and language gradients are clipped separately and then added, so
a large alpha_con cannot eat the whole clipping budget and starve the language term.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from cafe.config import OptimConfig

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


def backward_and_clip(terms: dict[str, Callable[[], torch.Tensor]], params: list[torch.nn.Parameter],
                      cfg: OptimConfig, sync: Callable[[list[torch.nn.Parameter]], None]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Run each term's forward + backward (see ``cafe.training.step``), synchronise gradients across ranks
    with ``sync``, clip as configured. Returns the terms' unweighted losses and the pre-clip gradient norm
    of each term ("per_loss") or of their sum ("global")."""
    if cfg.clip_mode != "per_loss" or len(terms) == 1:
        losses = {name: run() for name, run in terms.items()}
        sync(params)
        if cfg.clip_mode == "none":
            return losses, {}
        return losses, {"total": float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm))}
    losses: dict[str, torch.Tensor] = {}
    norms: dict[str, float] = {}
    accumulated: list[torch.Tensor | None] = [None] * len(params)
    for name, run in terms.items():
        for p in params:
            p.grad = None
        losses[name] = run()
        sync(params)
        norms[name] = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm))
        for i, p in enumerate(params):
            if p.grad is not None:
                accumulated[i] = p.grad if accumulated[i] is None else accumulated[i].add_(p.grad)
    for p, g in zip(params, accumulated):
        p.grad = g
    return losses, norms
