"""Vision warm-up for the embedded base: the tiny model's stand-in for SigLIP's own pretraining and for
LLaVA's projector-alignment stage.

A real LLaVA-OneVision starts from a vision tower that was pretrained before the language model ever saw
it, and a projector aligned to the language model's embeddings. The tiny model starts from random weights,
and the next-token loss alone teaches it colour, size and position but hardly shape (measured: after 2500
language-only steps the base named one shape for every object). So before language-only pretraining, the
vision side is trained for a few hundred cheap steps on, cell by cell of the shapes world's 3x3 grid, the
colour, shape and size of the object there (labels read from the training data's detailed descriptions),
through the same image processor and from the same features (``vision_feature_layer``) the language model
later reads. Target "words" trains tower and projector so that each cell's image token points at the
language model's (fixed) embeddings of the words naming its object; target "heads" trains the tower alone
through linear heads that are thrown away. Either way the base has still never been asked to embed.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cafe.data.samples import Sample
from cafe.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, objects_from_description
from cafe.models.adapter import VLMAdapter

ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}


def cell_labels(samples: list[Sample]) -> tuple[list[str], torch.Tensor]:
    """Images with a detailed description, and per image, cell and attribute the class index (the last
    index of each attribute = empty cell): ``[N, 9, 3]``."""
    images, labels = [], []
    for s in samples:
        objects = objects_from_description(s.answer)
        if not objects or s.image in images:
            continue
        row = [[len(values) for values in ATTRIBUTES.values()] for _ in POSITIONS]
        for o in objects:
            row[POSITIONS.index(o.position)] = [ATTRIBUTES[k].index(getattr(o, k)) for k in ATTRIBUTES]
        images.append(s.image)
        labels.append(row)
    if not images:
        raise ValueError("no detailed descriptions in the pretraining data: the vision warm-up needs them "
                         "(set pretrain.vision_steps=0 to skip it)")
    return images, torch.tensor(labels)


def _cell_pooling(tokens: int, image_size: int) -> torch.Tensor:
    """``[9, tokens]``: mean over the square patch grid's tokens whose centres fall in each cell."""
    grid = int(round(tokens ** 0.5))
    if grid * grid != tokens:
        raise ValueError(f"vision warm-up expects a square patch grid, got {tokens} tokens")
    patch = image_size / grid
    cell = ((torch.arange(grid) + 0.5) * patch // (image_size / 3)).long().clamp(max=2)
    pool = torch.zeros(len(POSITIONS), tokens)
    for r in range(grid):
        for c in range(grid):
            pool[cell[r] * 3 + cell[c], r * grid + c] = 1.0
    return pool / pool.sum(dim=1, keepdim=True).clamp(min=1.0)


EMPTY_WORD = "background"  # what the "words" target names an empty cell with


class _WordHeads:
    """Per attribute, scaled cosine similarity of a cell's token with the language model's (fixed) embeddings
    of that attribute's words: training against it puts the words' own directions into the image tokens."""

    def __init__(self, adapter: VLMAdapter, scale: float = 10.0):
        tokenizer = adapter.tokenizer
        words = {k: [*v, EMPTY_WORD] for k, v in ATTRIBUTES.items()}
        missing = (None, tokenizer.unk_token_id)
        unknown = [w for v in words.values() for w in v if tokenizer.convert_tokens_to_ids(w) in missing]
        if unknown:
            raise ValueError(f"pretrain.vision_target=words: the tokenizer has no single token for {unknown}; "
                             "train it on the shapes world's vocabulary, or set pretrain.vision_target=heads")
        self.table = adapter.model.get_input_embeddings().weight
        self.ids = {k: [tokenizer.convert_tokens_to_ids(w) for w in v] for k, v in words.items()}
        self.scale = scale

    def __call__(self, cells: torch.Tensor) -> dict[str, torch.Tensor]:
        cells = F.normalize(cells, dim=-1)
        return {k: self.scale * cells @ F.normalize(self.table[ids].detach(), dim=-1).T for k, ids in self.ids.items()}


class _LinearHeads(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, len(v) + 1) for k, v in ATTRIBUTES.items()})

    def forward(self, cells: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: head(cells) for k, head in self.heads.items()}


def warm_up_vision(adapter: VLMAdapter, samples: list[Sample], steps: int, lr: float, batch_size: int,
                   seed: int = 0, progress: bool = True, target: str = "heads") -> dict[str, float]:
    """Train the adapter's vision side in place on per-cell attributes; returns the last steps' accuracies.

    ``target="heads"``: the tower alone, through linear heads on its features. ``target="words"``: the tower
    and the projector, so that each cell's image token points at the LM's embeddings of the words that name
    the object there (the embeddings stay fixed)."""
    from PIL import Image

    if target not in ("heads", "words"):
        raise ValueError(f"pretrain.vision_target={target!r}: use 'words' or 'heads'")
    paths, labels = cell_labels(samples)
    model = adapter.model
    tower = model.model.vision_tower
    projector = model.model.multi_modal_projector
    layer = model.config.vision_feature_layer
    image_size = model.config.vision_config.image_size

    pixels = []
    for lo in range(0, len(paths), 256):
        images = []
        for p in paths[lo:lo + 256]:
            with Image.open(p) as img:
                images.append(img.convert("RGB"))
        # the base view of LLaVA-OneVision's anyres layout (first crop), as the language model sees it
        pixels.append(adapter.image_processor(images, return_tensors="pt")["pixel_values"][:, 0])
    pixels = torch.cat(pixels).to(adapter.device)
    labels = labels.to(adapter.device)

    if target == "words":
        heads, trained = _WordHeads(adapter), [*tower.parameters(), *projector.parameters()]
    else:
        heads = _LinearHeads(model.config.vision_config.hidden_size).to(adapter.device)
        trained = [*tower.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(trained, lr=lr)
    # OneCycleLR divides by zero when its rising phase ends on step 0 (pct_start * steps == 1) or on the last
    # step: rise over at least 2 steps, and keep the rate constant for runs too short to have a schedule
    if steps >= 3:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 2 / steps))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    gen = torch.Generator().manual_seed(seed)
    pool = None
    tower.train()
    recent: list[torch.Tensor] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="vision warm-up", disable=not progress, dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        idx = torch.randint(0, len(pixels), (batch_size,), generator=gen).to(adapter.device)
        features = tower(pixel_values=pixels[idx], output_hidden_states=True).hidden_states[layer]
        if target == "words":
            features = projector(features)  # the image tokens the language model reads
        if pool is None:
            pool = _cell_pooling(features.shape[1], image_size).to(features)
        logits = heads(torch.einsum("ct,bth->bch", pool, features))
        loss = torch.zeros((), device=adapter.device)
        correct = []
        occupied = labels[idx, :, 0] < len(ATTRIBUTES["colour"])
        for i, name in enumerate(ATTRIBUTES):
            loss = loss + F.cross_entropy(logits[name].flatten(0, 1), labels[idx, :, i].flatten())
            correct.append((logits[name].argmax(-1) == labels[idx, :, i])[occupied].float().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [torch.stack(correct).detach()])[-20:]
        if step % 20 == 0 or step == steps - 1:
            acc = torch.stack(recent).mean(0)
            bar.set_postfix({"loss": f"{loss.item():.3f}", **{k: f"{a:.2f}" for k, a in zip(ATTRIBUTES, acc.tolist())}})
    bar.close()
    opt.zero_grad(set_to_none=True)
    acc = torch.stack(recent).mean(0).tolist() if recent else [0.0] * len(ATTRIBUTES)
    summary = {f"{k}_accuracy": a for k, a in zip(ATTRIBUTES, acc)}
    summary["seconds"] = time.perf_counter() - start
    return summary
