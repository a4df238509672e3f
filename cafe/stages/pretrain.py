"""Stage `pretrain`: the tiny base model (the embedded stand-in for a pretrained LVLM), built once.

The output folder records the digest of the config sections that shape the base (``cafe_stage.json``): a run
with the same config returns the cached base at once, a changed one rebuilds it. (`dvc repro` caches the same
stage by its declared dependencies.)"""

from __future__ import annotations

import json
from pathlib import Path

from cafe.config import Params
from cafe.distributed import DistEnv, init_distributed
from cafe.training.pretrain import pretrain as run

MARKER = "cafe_stage.json"
SECTIONS = ("synth", "model", "prompts", "pretrain")


def _digest(p: Params) -> str:
    return p.digest(*SECTIONS)


def is_current(p: Params) -> bool:
    """Whether ``pretrain.output`` holds a base model built with this config."""
    out = Path(p.pretrain.output)
    marker = out / MARKER
    if not (marker.is_file() and (out / "model" / "config.json").is_file()):
        return False
    return json.loads(marker.read_text()).get("digest") == _digest(p)


def pretrain(p: Params, resume: bool = True, dist: DistEnv | None = None, force: bool = False) -> Path:
    """The base model directory (``<pretrain.output>/model``): the cached one when its config digest is current
    (unless ``force``), else trained now (continuing from the newest complete checkpoint when ``resume``)."""
    out = Path(p.pretrain.output)
    if is_current(p) and not force:
        return out / "model"
    dist = dist or init_distributed(p.train.backend)
    model = run(p, dist, resume=resume)
    if dist.is_main:
        (out / MARKER).write_text(json.dumps({"stage": "pretrain", "digest": _digest(p)}, indent=1))
    return Path(model)
