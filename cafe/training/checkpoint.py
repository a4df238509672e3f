"""Checkpoints that are complete or absent.

A checkpoint is a Hugging Face model directory (safetensors, processor) plus the trainer state (optimizer,
scheduler, step) and every rank's RNG state. It is written under a temporary name and renamed once whole;
a ``COMPLETE`` marker written last tells resume which ones are usable. The last ``keep_last`` are kept.

Nothing read from a checkpoint can run code (checkpoints also come from the object store): the trainer state
is JSON, the RNG and optimizer states hold only tensors and plain values and are read with
``torch.load(weights_only=True)`` (:func:`safe_load`). A checkpoint written by an older cafe (NumPy arrays
and pickled objects in its ``.pt`` files) is refused with the command that converts it, for one you trust:
``python -m cafe.training.checkpoint convert CHECKPOINT_DIR``.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
CONVERT = "python -m cafe.training.checkpoint convert"


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds more than tensors and plain values (objects whose loading could run code)."""


def safe_load(path: str | Path, map_location=None, allowed: tuple = ()):
    """``torch.load`` that never runs code: tensors, containers and numbers only, plus the classes in
    ``allowed`` (plain data classes, e.g. DeepSpeed's loss scaler). Anything else is refused, naming the file."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # what the weights-only unpickler raises for a forbidden object
        detail = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise UnsafeCheckpointError(
            f"{path}: refused: it holds Python objects, not only tensors ({detail}); cafe never runs code from a "
            f"checkpoint. If it was written by an older cafe and you trust it, convert it: "
            f"`{CONVERT} {Path(path).parent}`") from None
    except (RuntimeError, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise UnsafeCheckpointError(f"{path}: refused: not a readable torch file ({err}); delete this checkpoint "
                                    "(resume then uses the one before)") from None


def check_weights(directory: Path) -> None:
    """Every ``.safetensors`` file of a checkpoint has a readable header (safetensors holds no code; a damaged or
    replaced file is named here rather than deep inside ``from_pretrained``)."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(directory.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        except (SafetensorError, OSError) as err:
            raise UnsafeCheckpointError(f"{path}: refused: not a safetensors file ({err}); delete this checkpoint (resume "
                                        "then uses the one before)") from None


def rng_state() -> dict:
    """This process's RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    version, keys, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state()
    state = {"format": 2, "python": [version, list(keys), gauss],
             "numpy": {"name": name, "keys": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_rng_state(path: Path) -> dict:
    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != 2:
        raise UnsafeCheckpointError(f"{path}: an RNG state in an older format; convert the checkpoint: "
                                    f"`{CONVERT} {path.parent}`")
    return state


def write_trainer_state(directory: Path, state: dict) -> None:
    (directory / TRAINER_STATE).write_text(json.dumps(state, indent=1) + "\n")


def read_trainer_state(directory: Path) -> dict:
    """The step, strategy, seed and batch a checkpoint was written with (JSON; a pre-JSON ``trainer_state.pt``
    of plain values is read with ``weights_only=True``)."""
    path = directory / TRAINER_STATE
    if path.is_file():
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UnsafeCheckpointError(f"{path}: refused: not valid JSON ({err}); delete this checkpoint (resume then "
                                        "uses the one before)") from None
    elif (directory / "trainer_state.pt").is_file():
        state = safe_load(directory / "trainer_state.pt")
    else:
        raise FileNotFoundError(f"{directory}: no {TRAINER_STATE}; not a cafe checkpoint")
    fields = {"step": int, "seed": int, "global_batch": int}
    if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in fields.items()):
        raise UnsafeCheckpointError(f"{path}: refused: expected an object with integer step, seed and global_batch")
    return state


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


def convert(directory: str | Path) -> list[Path]:
    """Rewrite an older checkpoint you trust in the safe format: its trainer state as JSON, RNG states as tensors
    and plain values. This is the one place that unpickles (``weights_only=False``):
    run it only on checkpoints you wrote yourself. Returns the files rewritten."""
    directory = Path(directory)
    done = []
    old = directory / "trainer_state.pt"
    if old.is_file():
        state = torch.load(old, map_location="cpu", weights_only=False)
        if "optimizer" in state and not (directory / "optimizer.pt").is_file():
            torch.save({"optimizer": state["optimizer"], "scheduler": state["scheduler"]}, directory / "optimizer.pt")
            done.append(directory / "optimizer.pt")
        write_trainer_state(directory, {k: state[k] for k in ("step", "strategy", "world_size", "seed", "global_batch")
                                        if k in state})
        old.unlink()
        done.append(directory / TRAINER_STATE)
    for path in sorted(directory.glob("rng_state_*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") == 2:
            continue
        keep = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        new = rng_state() | {"torch": state["torch"]}
        new.pop("cuda", None)
        if "cuda" in state:
            new["cuda"] = state["cuda"]
        random.setstate(keep[0])
        np.random.set_state(keep[1])
        torch.set_rng_state(keep[2])
        torch.save(new, path)
        done.append(path)
    return done


if __name__ == "__main__":  # python -m cafe.training.checkpoint convert DIR
    if len(sys.argv) != 3 or sys.argv[1] != "convert":
        sys.exit(f"usage: {CONVERT} CHECKPOINT_DIR  (only for checkpoints you trust: it unpickles them)")
    for written in convert(sys.argv[2]):
        print(f"rewrote {written}")
