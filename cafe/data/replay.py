"""The instruction mixture replayed into L_lm (``train.lm_source: replay``), a deviation from the paper.

The paper's L_lm trains on the repurposed captions of its pairs; that is safe for a base tuned on millions of
instructions and fine-tuned for one epoch at 1e-5, but the embedded base, fine-tuned for several epochs at a
high learning rate, forgets every other answer format (MMStar-format 0.38 -> 0.09, docs/understanding.md).
Here each pair keeps its caption for L_con, and its language sample (prompt + answer) is one instruction
record **of the same image** (a caption, a description, a yes/no or a multiple-choice question), its kind
drawn with ``train.replay.mix``. The image is shared, so the step still packs into one sequence: a sample
carries one image, the L_lm prompt/answer and the L_con caption, as with ``lm_source: pairs``.

The kind is drawn from torch's global generator, which the trainer seeds and checkpoints, so a run is
reproducible and a resumed run draws what the uninterrupted one would have (with ``train.num_workers: 0``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from cafe.config import ReplayConfig
from cafe.data.samples import IMAGE_PLACEHOLDER, Sample


def load_replay_records(path: str | Path) -> tuple[dict[str, str], dict[str, dict[str, list[tuple[str, str]]]]]:
    """From LLaVA-OneVision records: record id -> image, and image -> kind -> [(prompt, answer)]."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"train.replay.data {path}: cannot read a JSON list of instruction records ({err})") from None
    image_of: dict[str, str] = {}
    by_image: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for n, rec in enumerate(records):
        try:
            turns = rec["conversations"]
            prompt = turns[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
            answer = turns[1]["value"]
            image, kind = rec["image"], rec.get("kind", "other")
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"train.replay.data {path}: record {n} needs id, image and a human/gpt conversation") from None
        image_of[str(rec.get("id", n))] = image
        by_image[image][kind].append((prompt, answer))
    return image_of, by_image


class ReplayDataset(Dataset):
    """Pairs whose language sample is replayed from the instruction records of the same image."""

    def __init__(self, pairs: Dataset, cfg: ReplayConfig):
        self.pairs, self.mix = pairs, {k: w for k, w in cfg.mix.items() if w > 0}
        self.image_of, self.by_image = load_replay_records(cfg.data)
        kinds = {k for per in self.by_image.values() for k in per}
        if not kinds & set(self.mix):
            raise ValueError(f"train.replay.mix names kinds {sorted(self.mix)}, but {cfg.data} has {sorted(kinds)}")

    def __len__(self) -> int:
        return len(self.pairs)

    def language_sample(self, sample: Sample) -> tuple[str, str]:
        """(prompt, answer) for L_lm: a record of the pair's image, of a kind drawn by ``mix``."""
        image = self.image_of.get(sample.id)
        if image is None:
            raise KeyError(f"pair {sample.id!r} is not a record of train.replay.data; replay needs the instruction "
                           "file the pairs were repurposed from")
        per_kind = self.by_image[image]
        kinds = [k for k in self.mix if per_kind.get(k)]
        if not kinds:
            return sample.prompt, sample.answer
        weights = torch.tensor([self.mix[k] for k in kinds], dtype=torch.float)
        options = per_kind[kinds[int(torch.multinomial(weights, 1))]]
        return options[int(torch.randint(len(options), ()))]

    def __getitem__(self, index: int) -> tuple[Sample, Image.Image]:
        sample, image = self.pairs[index]
        prompt, answer = self.language_sample(sample)
        caption = sample.caption if sample.caption is not None else sample.answer
        return replace(sample, prompt=prompt, answer=answer, caption=caption), image
