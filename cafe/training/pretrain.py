"""`cafe pretrain`: the embedded stand-in for a pretrained LLaVA-OneVision.

A tiny model of the real architecture, with a tokenizer trained on the shapes world, is trained
language-only on the shapes world's instruction data (brief captions, detailed descriptions, yes/no
questions). CAFe then fine-tunes from it exactly as the paper fine-tunes LLaVA-OneVision: the base
captions and answers well but has never been asked to embed.
"""

from __future__ import annotations

import json
from pathlib import Path

from cafe.config import ObjectiveConfig, OptimConfig, Params, TrainConfig
from cafe.data.samples import Sample, load_instruction_samples
from cafe.data.shapes import vocabulary_corpus
from cafe.distributed import DistEnv
from cafe.models import build_tiny, load_adapter
from cafe.models.adapter import VLMAdapter
from cafe.models.tuning import apply_trainable, resolve_trainable
from cafe.training.trainer import Trainer
from cafe.training.vision_warmup import warm_up_vision


def pretrain_config(params: Params) -> TrainConfig:
    p = params.pretrain
    return TrainConfig(
        data=p.data, output=p.output, max_steps=p.steps, batch_size=p.batch_size, seed=p.seed, save_every=p.save_every,
        optim=OptimConfig(lr=p.lr, lr_vision=p.lr if p.lr_vision is None else p.lr_vision, warmup_ratio=p.warmup_ratio, clip_mode="global"),
        objective=ObjectiveConfig(alpha_lm=1.0, alpha_con=0.0, lm_average=p.lm_average),
    )


def language_stage_params(params: Params) -> Params:
    """The params the language-only steps run with: the parts in ``pretrain.frozen`` take no gradients (as
    LLaVA keeps its pretrained tower), also when resuming from a checkpoint."""
    frozen = {part: False for part in params.pretrain.frozen}
    trainable = params.model.trainable.model_copy(update=frozen)
    return params.model_copy(update={"model": params.model.model_copy(update={"trainable": trainable})})


def build_base(params: Params, samples: list[Sample], progress: bool = True) -> tuple[VLMAdapter, dict | None]:
    """The tiny model with a tokenizer trained on the samples, its vision side warmed up (``pretrain.vision_steps``)
    and its trainable parts marked: what the language-only steps start from. Also the warm-up's summary.
    ``pretrain.vision_init`` names a model saved after an earlier run's warm-up instead (``<output>/warmed``):
    the language-only steps then start from it, and only they are tuned."""
    p = params.pretrain
    summary = None
    if p.vision_init:
        adapter = load_adapter(p.vision_init, params.prompts, params.model)
    else:
        corpus = vocabulary_corpus() + sorted({s.prompt for s in samples} | {s.answer for s in samples})
        adapter = build_tiny(corpus, params.synth.image_size, params.model.tiny, params.prompts, params.model,
                             seed=p.seed)
    if p.vision_steps > 0 and not p.vision_init:
        summary = warm_up_vision(adapter, samples, p.vision_steps, p.vision_lr, p.vision_batch_size, seed=p.seed,
                                 progress=progress, target=p.vision_target)
    adapter.trainable = resolve_trainable(language_stage_params(params).model.trainable, set())
    apply_trainable(adapter, adapter.trainable)
    return adapter, summary


def pretrain(params: Params, dist: DistEnv, resume: bool = True) -> Path:
    """Build the tiny model and train it language-only; returns the model directory."""
    cfg = pretrain_config(params)
    samples = load_instruction_samples(cfg.data)

    def init():
        adapter, summary = build_base(params, samples, progress=dist.is_main)
        if summary is not None and dist.is_main:
            Path(cfg.output).mkdir(parents=True, exist_ok=True)
            (Path(cfg.output) / "vision_warmup.json").write_text(json.dumps(summary, indent=1))
            adapter.save_pretrained(Path(cfg.output) / "warmed")
        return adapter

    return Trainer(cfg, language_stage_params(params), dist).fit(samples, init, resume=resume)
