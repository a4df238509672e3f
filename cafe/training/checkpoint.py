"""Checkpoints that are complete or absent.

A checkpoint is a Hugging Face model directory (safetensors, processor) plus the trainer state (optimizer,
scheduler, step) and every rank's RNG state. It is written under a temporary name and renamed once whole;
a ``COMPLETE`` marker written last tells resume which ones are usable. The last ``keep_last`` are kept.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

COMPLETE = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"checkpoint-{step:07d}"


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Usable checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def staging_dir(root: Path, step: int) -> Path:
    return root / f".tmp-checkpoint-{step:07d}"


def finalize(root: Path, step: int, keep_last: int) -> Path:
    """Mark the staged checkpoint complete, move it into place, and drop old ones."""
    staged = staging_dir(root, step)
    (staged / COMPLETE).write_text(str(step))
    final = checkpoint_dir(root, step)
    if final.exists():
        shutil.rmtree(final)
    staged.rename(final)
    if keep_last > 0:
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final
