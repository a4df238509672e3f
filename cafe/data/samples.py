"""Training samples and their deterministic, resumable order.

A :class:`Sample` is one image with a language instruction and its answer (for L_lm) and, for CAFe pairs,
a caption (for L_con). Instruction records (pretraining) keep their own instruction; repurposed pairs
(CAFe, read from the shards by :mod:`cafe.data.pairs`) use the configured caption prompt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Sample:
    id: str
    image: str  # path
    prompt: str
    answer: str
    caption: str | None = None
    # mined hard negatives (train.negatives, cafe.data.pairs.WithNegatives): n texts for the image, n images for
    # the caption, and which of the n are real (a pair with fewer is padded): (texts' mask, images' mask)
    negative_captions: tuple[str, ...] | None = None
    negative_images: tuple[Image.Image, ...] | None = None
    negative_mask: tuple[tuple[bool, ...], tuple[bool, ...]] | None = None


def load_instruction_samples(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """LLaVA-OneVision records (first human/gpt turn) as language-only samples."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    samples = []
    for rec in json.loads(path.read_text()):
        turns = rec["conversations"]
        question = turns[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        samples.append(Sample(id=rec["id"], image=str(root / rec["image"]), prompt=question, answer=turns[1]["value"]))
    return samples


class SampleDataset(Dataset):
    """Samples with their images loaded (RGB)."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Sample, Image.Image]:
        sample = self.samples[index]
        with Image.open(sample.image) as img:
            return sample, img.convert("RGB")


def collate(items: list[tuple[Sample, Image.Image]]) -> dict:
    samples = [s for s, _ in items]
    batch = {
        "ids": [s.id for s in samples],
        "images": [img for _, img in items],
        "prompts": [s.prompt for s in samples],
        "answers": [s.answer for s in samples],
        "captions": [s.caption for s in samples],
    }
    if samples and samples[0].negative_mask is not None:  # flat, sample by sample
        batch["negative_captions"] = [c for s in samples for c in s.negative_captions]
        batch["negative_images"] = [im for s in samples for im in s.negative_images]
        batch["negative_mask"] = torch.tensor([s.negative_mask for s in samples], dtype=torch.bool)
    return batch


class GlobalBatchSampler(Sampler[list[int]]):
    """Index lists for one rank, step by step.

    Each epoch is a seeded permutation cut into global batches of ``batch_size * world_size`` (the last
    incomplete one dropped); rank r takes rows ``[r*batch_size, (r+1)*batch_size)`` of each global batch.
    A global batch depends only on (seed, epoch, index), not on the number of ranks, and iteration can
    start at any step, which makes resuming exact.
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 start_step: int = 0, total_steps: int | None = None):
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise ValueError(f"{num_samples} samples cannot fill one global batch of {self.global_batch}; "
                             "lower train.batch_size or add data")
        self.num_samples, self.batch_size, self.rank, self.seed = num_samples, batch_size, rank, seed
        self.steps_per_epoch = num_samples // self.global_batch
        self.start_step = start_step
        self.total_steps = total_steps if total_steps is not None else self.steps_per_epoch

    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=gen)

    def global_indices(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        return perm[index * self.global_batch:(index + 1) * self.global_batch].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        cached_epoch, perm = -1, None
        for step in range(self.start_step, self.total_steps):
            epoch, index = divmod(step, self.steps_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, perm = epoch, self._permutation(epoch)
            lo = index * self.global_batch + self.rank * self.batch_size
            yield perm[lo:lo + self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


def steps_for_epochs(num_samples: int, global_batch: int, epochs: float) -> int:
    return max(1, math.floor(epochs * (num_samples // global_batch)))
