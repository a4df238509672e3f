"""Embedding-prompt selection (VladVA Figs. 2 and 5): score candidate (image prompt, text prompt) pairs
by the entropy of the next-token distribution at the embedding position (a prompt that makes the model
commit to "one word" gives a peaked distribution) and by retrieval on a small set, then rank them."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cafe.evaluation.retrieval import load_karpathy, recall_at_k
from cafe.models.adapter import VLMAdapter, last_token_index


@contextmanager
def _prompts(adapter: VLMAdapter, image_prompt: str, text_prompt: str):
    previous = adapter.prompts
    adapter.prompts = previous.model_copy(update={"image_embed": image_prompt, "text_embed": text_prompt})
    try:
        yield
    finally:
        adapter.prompts = previous


@torch.no_grad()
def embed_with_entropy(adapter: VLMAdapter, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised embeddings and the entropy (nats) of the next-token distribution at the same position."""
    hidden = adapter.hidden_states(inputs)
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(inputs["attention_mask"])]
    logp = F.log_softmax(adapter.model.lm_head(last).float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return F.normalize(last.float(), dim=-1).cpu(), entropy.cpu()


def rank_prompts(adapter: VLMAdapter, candidates: list[tuple[str, str]], karpathy: str | Path, images: int = 100,
                 batch_size: int = 64) -> list[dict]:
    """One row per candidate: mean next-token entropy (images, texts), R@1 both ways and their mean;
    sorted by mean R@1 (descending), then entropy (ascending)."""
    from cafe.evaluation.evaluate import _load_images

    paths, captions, owner = load_karpathy(karpathy)
    paths = paths[:images]
    keep = [i for i, o in enumerate(owner) if o < len(paths)]
    captions, owner = [captions[i] for i in keep], [owner[i] for i in keep]
    loaded = _load_images(paths)
    adapter.model.eval()
    rows = []
    for image_prompt, text_prompt in tqdm(candidates, desc="prompts", leave=False):
        with _prompts(adapter, image_prompt, text_prompt):
            img, img_h = zip(*[embed_with_entropy(adapter, adapter.image_embed_inputs(loaded[i:i + batch_size]))
                               for i in range(0, len(loaded), batch_size)])
            txt, txt_h = zip(*[embed_with_entropy(adapter, adapter.text_embed_inputs(captions[i:i + batch_size]))
                               for i in range(0, len(captions), batch_size)])
        recall = recall_at_k(torch.cat(img), torch.cat(txt), owner, ks=[1])
        rows.append({"image_prompt": image_prompt, "text_prompt": text_prompt,
                     "entropy_image": float(torch.cat(img_h).mean()), "entropy_text": float(torch.cat(txt_h).mean()),
                     "i2t_R@1": recall["i2t_R@1"], "t2i_R@1": recall["t2i_R@1"]})
    for row in rows:
        row["entropy"] = (row["entropy_image"] + row["entropy_text"]) / 2
        row["R@1"] = (row["i2t_R@1"] + row["t2i_R@1"]) / 2
    rows.sort(key=lambda r: (-r["R@1"], r["entropy"]))
    by_entropy = sorted(range(len(rows)), key=lambda i: rows[i]["entropy"])
    for rank, i in enumerate(by_entropy, 1):
        rows[i]["entropy_rank"] = rank
    for rank, row in enumerate(rows, 1):
        row["retrieval_rank"] = rank
    return rows
