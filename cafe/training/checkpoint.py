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


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


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


class StoreCheckpoints:
    """Complete checkpoints mirrored to an object store (``train.checkpoint_store``, an ``open_store`` URI:
    a folder or ``s3://bucket/prefix``), the copy that survives a pod or node being replaced.

    Layout: ``checkpoint-<step>/<files>``, then ``checkpoint-<step>/COMPLETE`` written last, once every node
    has uploaded its files. A checkpoint without the marker (a run killed mid-upload) is never picked up and
    is deleted when a newer one completes; only the newest ``keep_last`` complete ones are kept.
    """

    def __init__(self, uri: str):
        from cafe.storage import open_store

        self.store = open_store(uri)

    def _steps(self) -> tuple[list[int], list[int]]:
        complete, seen = set(), set()
        for key in self.store.list("checkpoint-"):
            name, _, rest = key.partition("/")
            if m := _NAME.match(name):
                seen.add(int(m.group(1)))
                if rest == COMPLETE:
                    complete.add(int(m.group(1)))
        return sorted(complete), sorted(seen - complete)

    def latest_step(self) -> int | None:
        complete, _ = self._steps()
        return complete[-1] if complete else None

    def upload(self, directory: Path, step: int) -> None:
        """Upload the files of a (staged or final) local checkpoint directory, without its marker."""
        name = checkpoint_dir(Path(), step).name
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE):
            self.store.put_file(f"{name}/{path.relative_to(directory).as_posix()}", path)

    def mark_complete(self, step: int, keep_last: int) -> None:
        """Write the marker (after every node's upload), then drop old and abandoned checkpoints."""
        name = checkpoint_dir(Path(), step).name
        self.store.put_bytes(f"{name}/{COMPLETE}", str(step).encode())
        complete, partial = self._steps()
        drop = (complete[:-keep_last] if keep_last > 0 else []) + [s for s in partial if s < step]
        for old in drop:
            self.store.delete_prefix(checkpoint_dir(Path(), old).name)

    def fetch(self, step: int, root: Path, tag: str) -> Path:
        """Download checkpoint ``step`` into ``root`` as a complete local checkpoint (unless one is there).
        ``tag`` names this downloader, so two nodes sharing ``root`` never write into one directory."""
        final = checkpoint_dir(root, step)
        if (final / COMPLETE).is_file():
            return final
        tmp = root / f".fetch-{final.name}-{tag}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.store.get_dir(final.name, tmp)
        (tmp / COMPLETE).write_text(str(step))
        try:
            if final.exists():
                shutil.rmtree(final)  # an incomplete local copy
            tmp.rename(final)
        except OSError:  # another node sharing this folder moved its copy in first
            shutil.rmtree(tmp, ignore_errors=True)
        return final
