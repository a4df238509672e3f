"""The loss terms of one CAFe step, each as a closure that runs its forward and backward passes.

Running each term's forward and backward together (rather than building every graph first) keeps only one
term's graph alive at a time, lets the optimizer clip each term's gradient on its own, and makes
gradient caching possible:

- ``lm``: next-token loss on the answers, the mean over the global batch's answer tokens
  (``objective.lm_average: token``) or over its samples of each sample's token mean (``sample``); computed in
  chunks of ``train.grad_cache_chunk`` samples when set, each chunk back-propagated at once.
- ``con``: symmetric InfoNCE over the global batch. Without caching, embeddings keep their graph and are
  gathered across ranks with gradient. With ``train.grad_cache_chunk`` (gradient caching, Gao et al. 2021):
  1. embed every chunk without a graph, recording the RNG state before each chunk;
  2. gather the embeddings, compute the loss on detached leaves, back-propagate to get d loss / d embedding;
  3. re-embed each chunk with a graph under its recorded RNG state (so dropout matches) and back-propagate
     ``sum(embedding * cached_gradient)``, which puts exactly the full-batch gradient on the parameters
     while only one chunk's activations are alive.
  With mined hard negatives in the batch (``train.negatives``) each sample's negative texts and images are
  embedded with it, in the same chunks, and join its denominators (``terms.contrastive_loss``).

Every backward goes through the ``backward`` callable given to :func:`loss_terms` (default
``tensor.backward()``); the training strategy passes its own (``DeepSpeedStrategy`` runs ``engine.backward``),
so the same closures run under hand-averaged DDP-style gradients and under the DeepSpeed engine at any ZeRO
stage. The surrogate ``sum(embedding * cached_gradient)`` is a scalar loss like any other, which is what makes
the cached path exact under ZeRO-2/3: the engine reduces (and partitions) its gradient like a micro-batch's.
"""

from __future__ import annotations

from typing import Sequence

import torch

from cafe.config import TrainConfig
from cafe.distributed import gather
from cafe.models.adapter import VLMAdapter
from cafe.training import shared_prefix
from cafe.training.terms import (Backward, Term, Terms, cached_surrogate, contrastive_loss, plain_backward, replay,
                                 rng_snapshot, token_weights)
from cafe.training.terms import spans as _spans


def lm_term(adapter: VLMAdapter, batch: dict, terms: Terms, chunk: int, backward: Backward = plain_backward) -> Term:
    def run() -> torch.Tensor:
        parts = [adapter.lm_inputs(batch["images"][lo:hi], batch["prompts"][lo:hi], batch["answers"][lo:hi])
                 for lo, hi in _spans(len(batch["images"]), chunk)]
        weights = [token_weights(p["labels"][:, 1:], terms.objective.lm_average) for p in parts]
        counts = gather(sum(n for _, n in weights)[None])
        # gradients are averaged across ranks afterwards, hence the world-size factor
        scale = len(counts) / counts.sum()
        total = torch.zeros((), device=adapter.device)
        for inputs, (w, _) in zip(parts, weights):
            loss = (adapter.lm_loss(inputs, reduction="none") * w).sum() * scale
            backward(terms.weighted(lm=loss))
            total += loss.detach()
        return total
    return run


def _embed_pair(adapter: VLMAdapter, images: Sequence, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return adapter.embed(adapter.image_embed_inputs(images)), adapter.embed(adapter.text_embed_inputs(captions))


def _embed(adapter: VLMAdapter, batch: dict, lo: int, hi: int) -> list[torch.Tensor]:
    """Image and text embeddings of samples ``[lo, hi)``; with mined negatives in the batch also their negative
    texts and images (``n`` per sample, flat)."""
    out = list(_embed_pair(adapter, batch["images"][lo:hi], batch["captions"][lo:hi]))
    if "negative_mask" in batch:
        n = batch["negative_mask"].shape[-1]
        neg_image, neg_text = _embed_pair(adapter, batch["negative_images"][lo * n:hi * n],
                                          batch["negative_captions"][lo * n:hi * n])
        out += [neg_text, neg_image]
    return out


def contrastive_term(adapter: VLMAdapter, batch: dict, cfg: TrainConfig, terms: Terms,
                     backward: Backward = plain_backward) -> Term:
    images, captions = batch["images"], batch["captions"]
    if any(c is None for c in captions):
        raise ValueError("alpha_con > 0 needs captions: train on repurposed pairs, not instruction records")
    spans = _spans(len(images), cfg.grad_cache_chunk)
    n = batch["negative_mask"].shape[-1] if "negative_mask" in batch else 0

    def direct() -> torch.Tensor:
        loss = contrastive_loss(_embed(adapter, batch, 0, len(images)), batch, cfg)
        backward(terms.weighted(con=loss))
        return loss.detach()

    def cached() -> torch.Tensor:
        device = adapter.device
        states, parts = [], []
        with torch.no_grad():
            for lo, hi in spans:
                states.append(rng_snapshot(device))
                parts.append(_embed(adapter, batch, lo, hi))
        leaves = [torch.cat(kind).requires_grad_() for kind in zip(*parts)]
        loss = contrastive_loss(leaves, batch, cfg)
        # on detached leaves: no parameter takes part, so this stays a plain autograd call
        terms.weighted(con=loss).backward()
        for (lo, hi), state in zip(spans, states):
            with replay(state, device):
                chunk = _embed(adapter, batch, lo, hi)
            backward(cached_surrogate(chunk, leaves, lo, hi, n))
        return loss.detach()

    return cached if len(spans) > 1 else direct


def loss_terms(adapter: VLMAdapter, batch: dict, cfg: TrainConfig,
               backward: Backward = plain_backward) -> Terms:
    """The step's terms: "lm" when alpha_lm > 0, "con" when alpha_con > 0; each back-propagates through
    ``backward``. With ``train.step: shared_prefix`` both come from one packed forward
    (``cafe.training.shared_prefix``) unless the model or settings cannot be packed exactly (logged)."""
    if cfg.step == "shared_prefix":
        reason = shared_prefix.fallback_reason(adapter, cfg, backward)
        if reason is None:
            return shared_prefix.shared_prefix_terms(adapter, batch, cfg, backward)
        shared_prefix.warn_fallback(reason)
    terms = Terms(cfg.objective, separate=True)
    if cfg.objective.alpha_lm > 0:
        terms["lm"] = lm_term(adapter, batch, terms, cfg.grad_cache_chunk, backward)
    if cfg.objective.alpha_con > 0:
        terms["con"] = contrastive_term(adapter, batch, cfg, terms, backward)
    if not terms:
        raise ValueError("alpha_lm and alpha_con are both 0: nothing to train")
    return terms
