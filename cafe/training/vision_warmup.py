"""Vision warm-up for the embedded base: the tiny tower's stand-in for SigLIP's own pretraining.

A real LLaVA-OneVision starts from a vision tower that was pretrained before the language model ever saw
it. The tiny tower starts from random weights, and the next-token loss alone teaches it colour, size and
position but hardly shape (measured: after 2500 language-only steps the base named one shape for every
object). So before language-only pretraining, the tower is trained for a few hundred cheap steps to
recognise, cell by cell of the shapes world's 3x3 grid, the colour, shape and size of the object there
(labels read from the training data's detailed descriptions), through the same image processor and from
the same features (``vision_feature_layer``) the language model later reads. The linear heads are thrown
away; the base has still never been asked to embed.
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


def warm_up_vision(adapter: VLMAdapter, samples: list[Sample], steps: int, lr: float, batch_size: int,
                   seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Train the adapter's vision tower in place on per-cell attributes; returns the last steps' accuracies."""
    from PIL import Image

    paths, labels = cell_labels(samples)
    model = adapter.model
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    image_size = model.config.vision_config.image_size

    pixels = []
    for lo in range(0, len(paths), 256):
        images = []
        for p in paths[lo:lo + 256]:
            with Image.open(p) as img:
                images.append(img.convert("RGB"))
        # the base view of LLaVA-OneVision's anyres layout (first crop), as the language model sees it
        pixels.append(adapter.processor.image_processor(images, return_tensors="pt")["pixel_values"][:, 0])
    pixels = torch.cat(pixels).to(adapter.device)
    labels = labels.to(adapter.device)

    hidden = model.config.vision_config.hidden_size
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, len(v) + 1) for k, v in ATTRIBUTES.items()}).to(adapter.device)
    opt = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    pool = None
    tower.train()
    recent: list[torch.Tensor] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="vision warm-up", disable=not progress, dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        idx = torch.randint(0, len(pixels), (batch_size,), generator=gen).to(adapter.device)
        features = tower(pixel_values=pixels[idx], output_hidden_states=True).hidden_states[layer]
        if pool is None:
            pool = _cell_pooling(features.shape[1], image_size).to(features)
        cells = torch.einsum("ct,bth->bch", pool, features)
        loss = torch.zeros((), device=adapter.device)
        correct = []
        for i, (name, head) in enumerate(heads.items()):
            logits = head(cells)
            loss = loss + F.cross_entropy(logits.flatten(0, 1), labels[idx, :, i].flatten())
            occupied = labels[idx, :, 0] < len(ATTRIBUTES["colour"])
            correct.append((logits.argmax(-1) == labels[idx, :, i])[occupied].float().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [torch.stack(correct).detach()])[-20:]
        if step % 20 == 0 or step == steps - 1:
            acc = torch.stack(recent).mean(0)
            bar.set_postfix({"loss": f"{loss.item():.3f}", **{k: f"{a:.2f}" for k, a in zip(ATTRIBUTES, acc.tolist())}})
    bar.close()
    acc = torch.stack(recent).mean(0).tolist() if recent else [0.0] * len(ATTRIBUTES)
    summary = {f"{k}_accuracy": a for k, a in zip(ATTRIBUTES, acc)}
    summary["seconds"] = time.perf_counter() - start
    return summary
