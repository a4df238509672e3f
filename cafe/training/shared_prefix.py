"""The shared-prefix CAFe step (``train.step: shared_prefix``): one forward for both objectives.

Under causal attention the hidden states of ``[system][image tokens]`` are the same in the language pass and
in the image-embedding pass, so each sample becomes ONE packed sequence

    [shared prefix][language instruction + answer][embedding prompt]

with a block attention mask (each continuation attends to the prefix and, causally, to itself; padding only
to itself) and position ids in which both continuations start where the prefix ends, as in their separate
passes. Each image goes through the vision tower once; ``L_lm`` comes from the language continuation (the LM
head only at labelled positions; ``objective.lm_average`` weighs its tokens as the three-pass step does, through
``terms.token_weights``: per answer token, or per sample over the global batch's samples with an answer) and the
image embedding from the embedding continuation's last token. Text
embeddings are text-only already (no pixels, no vision work). Rotary positions are relative, so the
left-padded separate embedding pass (whose positions are shifted by its padding) gives the same numbers.

Mined hard negatives (``train.negatives``): a sample's negative texts are text-only embeddings and go through
the same text pass as the captions (one batch per chunk); its negative images have no language continuation
to share a prefix with, so they are embedded in one image-embedding pass per chunk (a packed row would be
padded to the packed length). Both join ``terms.contrastive_loss`` as in the three-pass step, in the same
gradient-caching chunks, so the loss and gradients are the three-pass step's (hardness weighting included).

Masks: an additive float mask ``[B, 1, L, L]`` for eager / SDPA (a boolean one is silently wrong under eager,
STACK-NOTES); on CUDA the model is switched to FlexAttention and gets a ``BlockMask`` (SDPA with an arbitrary
mask loses its flash kernels and transformers' FlashAttention takes no custom 4-D mask).

Backward: when the terms must leave their gradients apart (``Terms.separate``: ``optim.clip_mode: per_loss``
under the DDP-style strategy, and the measuring steps of ``balanced``) the language loss back-propagates with
the graph retained and the contrastive loss after it; otherwise (``global``/``none``, the other steps of
``balanced``, DeepSpeed, which clips the total) one backward of ``a_lm L_lm + a_con L_con``. With gradient
caching (``train.grad_cache_chunk``) the graph-building re-run of each chunk computes the language loss and the
cached-gradient surrogate in the same forward and back-propagates them together; under ``per_loss`` or
``balanced`` that cannot keep the terms apart, so those combinations fall back to three-pass.

Families: 1-D rotary positions pack exactly (LLaVA-OneVision, LLaVA-1.5). Qwen2-VL's 3-D rotary positions
(M-RoPE: image tokens take (time, height, width) positions, the text after an image continues from the image's
largest side) pack too: each continuation takes the positions its own separate pass would give it, computed by
the model's own ``get_rope_index`` for the language row and for the embedding row (``mrope_positions`` of the
adapter); the prefix's are the same in both. Any family not in :data:`PACKABLE` falls back to the three-pass
step with a logged message.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import torch
import torch.nn.functional as F

from cafe.config import TrainConfig
from cafe.distributed import gather
from cafe.models.adapter import IGNORE_INDEX, VLMAdapter
from cafe.training.terms import (Backward, Terms, cached_surrogate, contrastive_loss, plain_backward, replay,
                                 rng_snapshot, spans, token_weights)

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def warn_fallback(reason: str) -> None:
    """Say once per reason (not every step) that the three-pass step runs instead."""
    log.warning("train.step=shared_prefix falls back to three_pass: %s", reason)

PACKABLE = ("llava_onevision", "llava", "qwen2_vl")
PREFIX, LANGUAGE, EMBEDDING, PADDING = 0, 1, 2, -1


def fallback_reason(adapter: VLMAdapter, cfg: TrainConfig, backward: Backward) -> str | None:
    """Why this step cannot be shared-prefix (then the three-pass step runs), or None."""
    if adapter.family not in PACKABLE:
        return f"model family {adapter.family!r} cannot be packed exactly (its position scheme is not known here)"
    if cfg.objective.alpha_lm <= 0 or cfg.objective.alpha_con <= 0:
        return "only one objective is on: nothing to share"
    if cfg.grad_cache_chunk > 0 and cfg.optim.clip_mode in ("per_loss", "balanced") and backward is plain_backward:
        return f"gradient caching with per-loss clipping (clip_mode {cfg.optim.clip_mode}) needs each term's gradient apart"
    return None


def pack(adapter: VLMAdapter, images: Sequence, prompts: Sequence[str], answers: Sequence[str]) -> dict:
    """One packed sequence per sample: input ids, position ids (``[B, L]``, or ``[3, B, L]`` for M-RoPE),
    segment ids, next-token targets, pixels.

    The shared prefix is the longest common token prefix of the language row and the image-embedding row
    (always holding every image token), cut before the first soft-prompt slot and so that each continuation
    keeps at least one token.
    """
    lm = adapter.lm_inputs(images, prompts, answers)  # right padding, labels on the answers
    tok = adapter.tokenizer
    image_id = adapter.processor.image_token_id
    user = [{"type": "image"}, {"type": "text", "text": adapter._soft_placeholder() + adapter.prompts.image_embed}]
    embed_ids = tok(adapter._template(adapter._messages(user), True))["input_ids"]
    if embed_ids.count(image_id) != 1:
        raise ValueError("the image embedding instruction must hold exactly one image token")
    cut = embed_ids.index(image_id)
    mrope = getattr(adapter, "mrope_positions", None)  # 3-D rotary positions (Qwen2-VL), else 1-D
    rows = []
    for i in range(len(images)):
        n = int(lm["attention_mask"][i].sum())
        ids, labels = lm["input_ids"][i, :n].tolist(), lm["labels"][i, :n].tolist()
        emb = embed_ids[:cut] + [image_id] * ids.count(image_id) + embed_ids[cut + 1:]
        p = 0
        while p < min(n, len(emb)) and ids[p] == emb[p]:
            p += 1
        if adapter.soft_prompt is not None and tok.pad_token_id in emb:
            p = min(p, emb.index(tok.pad_token_id))
        p = min(p, n - 1, len(emb) - 1)
        if image_id in ids[p:] or image_id in emb[p:]:
            raise ValueError(f"sample {i}: the language and embedding instructions share no prefix holding the "
                             "image; use train.step: three_pass")
        a, e = n - p, len(emb) - p
        targets = labels[1:] + [IGNORE_INDEX]  # position j predicts token j + 1 of the language row
        if mrope is None:
            positions = torch.tensor([list(range(n)) + list(range(p, p + e))])
        else:  # each continuation as in its own pass; one image per sample, in batch order
            grid = lm["image_grid_thw"][i:i + 1]
            positions = torch.cat([mrope(torch.tensor(ids, device=grid.device), grid),
                                   mrope(torch.tensor(emb, device=grid.device), grid)[:, p:]], dim=1)
        rows.append({
            "input_ids": ids + emb[p:],
            "positions": positions,
            "segment": [PREFIX] * p + [LANGUAGE] * a + [EMBEDDING] * e,
            "targets": targets + [IGNORE_INDEX] * e,
            "soft": [False] * n + [t == tok.pad_token_id for t in emb[p:]],
        })
    length = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": tok.pad_token_id, "segment": PADDING, "targets": IGNORE_INDEX, "soft": False}
    out = {k: torch.tensor([r[k] + [v] * (length - len(r[k])) for r in rows], device=adapter.device)
           for k, v in fill.items()}
    positions = torch.stack([F.pad(r["positions"], (0, length - r["positions"].shape[1])) for r in rows], dim=1)
    out["position_ids"] = (positions[0] if mrope is None else positions).to(adapter.device)
    out["last"] = torch.tensor([len(r["input_ids"]) - 1 for r in rows], device=adapter.device)
    # mm_token_type_ids only serve the model's own position computation, which the packed positions replace
    out["pixels"] = {k: v for k, v in lm.items()
                     if k not in ("input_ids", "attention_mask", "labels", "mm_token_type_ids")}
    return out


def allowed(segment: torch.Tensor) -> torch.Tensor:
    """``[B, L, L]`` boolean: query q may attend key k (causal; prefix or own continuation; padding: itself)."""
    length = segment.shape[1]
    idx = torch.arange(length, device=segment.device)
    q, k = segment[:, :, None], segment[:, None, :]
    ok = (idx[None, None, :] <= idx[None, :, None]) & ((k == PREFIX) | (k == q)) & (q != PADDING) & (k != PADDING)
    return ok | torch.eye(length, dtype=torch.bool, device=segment.device)


def attention_mask(adapter: VLMAdapter, segment: torch.Tensor):
    """The additive float mask for eager / SDPA, a FlexAttention ``BlockMask`` under flex_attention."""
    if adapter.model.config._attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q, k):
            sq, sk = segment[b, q], segment[b, k]
            return ((k <= q) & ((sk == PREFIX) | (sk == sq)) & (sq != PADDING) & (sk != PADDING)) | (q == k)

        length = segment.shape[1]
        return create_block_mask(mask_mod, segment.shape[0], None, length, length, device=segment.device)
    dtype = adapter.model.get_input_embeddings().weight.dtype
    ok = allowed(segment)
    mask = torch.zeros(ok.shape, dtype=dtype, device=segment.device).masked_fill(~ok, torch.finfo(dtype).min)
    return mask[:, None]


def select_attention(adapter: VLMAdapter) -> None:
    """On CUDA, switch the model to FlexAttention (exact with a block mask, and fast); CPU keeps its own."""
    if adapter.device.type == "cuda" and adapter.model.config._attn_implementation != "flex_attention":
        log.info("shared-prefix step: attention %s -> flex_attention (block mask)",
                 adapter.model.config._attn_implementation)
        adapter.model.set_attn_implementation("flex_attention")


def packed_forward(adapter: VLMAdapter, packed: dict, average: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted sum of the answers' next-token losses, normalised image embeddings) from one forward.

    ``average`` is ``objective.lm_average``: "token" sums the token losses, "sample" weighs each token by
    1 / its sample's answer length (``terms.token_weights``, as the three-pass step does on its labels)."""
    inputs = {"input_ids": packed["input_ids"], "position_ids": packed["position_ids"],
              "attention_mask": attention_mask(adapter, packed["segment"]), **packed["pixels"]}
    if adapter.soft_prompt is not None:
        inputs["soft_prompt_mask"] = packed["soft"]
    hidden = adapter.hidden_states(inputs)
    keep = packed["targets"] != IGNORE_INDEX
    logits = adapter.model.lm_head(hidden[keep])
    weights, _ = token_weights(packed["targets"], average)
    lm = (F.cross_entropy(logits.float(), packed["targets"][keep], reduction="none") * weights).sum()
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), packed["last"]]
    return lm, F.normalize(pooled.float(), dim=-1)


def shared_prefix_terms(adapter: VLMAdapter, batch: dict, cfg: TrainConfig,
                        backward: Backward = plain_backward) -> Terms:
    """The "lm" and "con" terms of ``cafe.training.step`` computed from one packed forward per chunk."""
    obj = cfg.objective
    images, captions = batch["images"], batch["captions"]
    if any(c is None for c in captions):
        raise ValueError("alpha_con > 0 needs captions: train on repurposed pairs, not instruction records")
    select_attention(adapter)
    chunks = spans(len(images), cfg.grad_cache_chunk)
    packs = [pack(adapter, images[lo:hi], batch["prompts"][lo:hi], batch["answers"][lo:hi]) for lo, hi in chunks]
    local = sum(token_weights(p["targets"], obj.lm_average)[1] for p in packs)  # answer tokens, or samples
    counts = gather(local[None])
    scale = len(counts) / counts.sum()  # gradients are averaged across ranks afterwards
    terms = Terms(obj, separate=cfg.optim.clip_mode == "per_loss" and backward is plain_backward)
    state: dict[str, torch.Tensor] = {}
    n = batch["negative_mask"].shape[-1] if "negative_mask" in batch else 0

    def text_side(lo: int, hi: int) -> list[torch.Tensor]:
        """Samples ``[lo, hi)``'s text embeddings, and with mined negatives their negative texts (in the same
        text-only pass) and negative images (one image-embedding pass): what joins the packed image embeddings
        in ``terms.contrastive_loss``."""
        texts = list(captions[lo:hi]) + list(batch["negative_captions"][lo * n:hi * n] if n else [])
        text = adapter.embed(adapter.text_embed_inputs(texts))
        if not n:
            return [text]
        negative_images = adapter.embed(adapter.image_embed_inputs(batch["negative_images"][lo * n:hi * n]))
        return [text[:hi - lo], text[hi - lo:], negative_images]

    def direct_lm() -> torch.Tensor:
        lm, image = packed_forward(adapter, packs[0], obj.lm_average)
        lm = lm * scale
        if terms.separate:  # the image embeddings' graph stays for the contrastive term's backward
            terms.weighted(lm=lm).backward(retain_graph=True)
            state["image"] = image
        else:
            con = contrastive_loss([image, *text_side(0, len(images))], batch, cfg)
            backward(terms.weighted(lm=lm, con=con))
            state["con"] = con.detach()
        return lm.detach()

    def direct_con() -> torch.Tensor:
        if "image" not in state:
            return state.pop("con")
        con = contrastive_loss([state.pop("image"), *text_side(0, len(images))], batch, cfg)
        backward(terms.weighted(con=con))
        return con.detach()

    def cached_lm() -> torch.Tensor:
        device = adapter.device
        states, parts = [], []
        with torch.no_grad():
            for (lo, hi), packed in zip(chunks, packs):
                states.append(rng_snapshot(device))
                parts.append([packed_forward(adapter, packed, obj.lm_average)[1], *text_side(lo, hi)])
        leaves = [torch.cat(kind).requires_grad_() for kind in zip(*parts)]
        con = contrastive_loss(leaves, batch, cfg)
        terms.weighted(con=con).backward()  # detached leaves: a plain autograd call
        state["con"] = con.detach()
        total = torch.zeros((), device=device)
        for (lo, hi), packed, rng in zip(chunks, packs, states):
            with replay(rng, device):
                lm, image_chunk = packed_forward(adapter, packed, obj.lm_average)
                chunk = [image_chunk, *text_side(lo, hi)]
            lm = lm * scale
            backward(terms.weighted(lm=lm) + cached_surrogate(chunk, leaves, lo, hi, n))
            total += lm.detach()
        return total

    if len(chunks) > 1:
        terms.separate = False
        terms.update(lm=cached_lm, con=lambda: state.pop("con"))
    else:
        terms.update(lm=direct_lm, con=direct_con)
    return terms
