"""Nothing read from a checkpoint runs code: a pickle payload planted in any checkpoint file (trainer state,
RNG state, optimizer state, weights; DeepSpeed's model and optimizer partitions) is refused on resume,
naming the file, and the payload never runs (it would write a marker file). Old-format checkpoints are
refused with the command that converts them, and load once converted."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cafe.config import save_params
from cafe.distributed import DistEnv
from cafe.training import checkpoint as ckpt
from cafe.training.trainer import Trainer
from tests.conftest import make_adapter
from tests.multiproc import train_pairs

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates ``marker``: the proof that a load ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def plant(path: Path, marker: Path) -> None:
    """Replace ``path`` by a torch file holding the payload next to plausible state."""
    torch.save({"step": 2, "optimizer": Payload(marker), "weights": torch.zeros(3)}, path)


def test_the_payload_runs_under_a_plain_unpickling_load(tmp_path):
    """The control: the planted file is a real exploit for ``weights_only=False``."""
    marker = tmp_path / "ran"
    plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


def test_safe_load_refuses_objects_and_names_the_file(tmp_path):
    marker = tmp_path / "ran"
    plant(tmp_path / "x.pt", marker)
    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"x\.pt: refused.*convert"):
        ckpt.safe_load(tmp_path / "x.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ckpt.UnsafeCheckpointError, match="junk.pt"):
        ckpt.safe_load(tmp_path / "junk.pt")


def _configure(params, output, steps):
    t = params.train
    t.output, t.max_steps, t.batch_size, t.save_every, t.keep_last = str(output), steps, 8, 2, 2
    return t


def _checkpoint_files(root: Path) -> list[str]:
    latest = ckpt.latest_checkpoint(root / "checkpoints")
    return sorted(p.relative_to(latest).as_posix() for p in latest.rglob("*") if p.is_file())


STATE_FILES = ["rng_state_0.pt", "optimizer.pt", "trainer_state.json", "model.safetensors"]


def test_every_state_file_with_a_payload_is_refused_in_process(params, tmp_path):
    samples = train_pairs(params)
    init = lambda: make_adapter(params)  # noqa: E731
    Trainer(_configure(params, tmp_path / "run", 4), params, DistEnv(), progress=False).fit(samples, init, stop_after=2)
    assert set(STATE_FILES) <= set(_checkpoint_files(tmp_path / "run"))
    for name in STATE_FILES:
        out = tmp_path / name.replace(".", "_")
        shutil.copytree(tmp_path / "run", out)
        marker = tmp_path / f"ran-{name}"
        plant(ckpt.latest_checkpoint(out / "checkpoints") / name, marker)
        with pytest.raises(Exception, match=name.replace(".", r"\.")) as err:
            Trainer(_configure(params, out, 4), params, DistEnv(), progress=False).fit(samples, init)
        assert not marker.exists(), f"{name}: the payload ran"
        assert not (out / "model").exists(), name
        assert "Traceback" not in str(err.value)


def test_an_old_format_checkpoint_is_refused_with_the_convert_command_and_loads_once_converted(params, tmp_path):
    samples = train_pairs(params)
    init = lambda: make_adapter(params)  # noqa: E731
    cfg = _configure(params, tmp_path / "run", 4)
    Trainer(cfg, params, DistEnv(), progress=False).fit(samples, init, stop_after=2)
    latest = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    # rewrite it as the previous cafe did: pickled NumPy RNG state, trainer state in a .pt file
    new = torch.load(latest / "rng_state_0.pt", weights_only=True)
    n = new["numpy"]
    old_rng = {"python": (new["python"][0], tuple(new["python"][1]), new["python"][2]),
               "numpy": (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]),
               "torch": new["torch"]}
    torch.save(old_rng, latest / "rng_state_0.pt")
    torch.save(json.loads((latest / "trainer_state.json").read_text()), latest / "trainer_state.pt")
    (latest / "trainer_state.json").unlink()

    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"rng_state_0\.pt.*python -m cafe\.training\.checkpoint convert"):
        Trainer(cfg, params, DistEnv(), progress=False).fit(samples, init)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "cafe.training.checkpoint", "convert", str(latest)], env=env,
                          capture_output=True, text=True, check=True)
    assert "rng_state_0.pt" in done.stdout and "trainer_state.json" in done.stdout
    assert ckpt.load_rng_state(latest / "rng_state_0.pt")["numpy"]["pos"] == n["pos"]
    resumed = Trainer(cfg, params, DistEnv(), progress=False).fit(samples, init)
    assert json.loads((resumed / "train_summary.json").read_text())["resumed_from"].endswith("checkpoint-0000002")


# ----------------------------------------------------------------- through `cafe train`
def _cafe_train(params, params_file: Path) -> subprocess.CompletedProcess:
    save_params(params, params_file)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "2000"}
    return subprocess.run([str(Path(sys.executable).parent / "cafe"), "train", "--params", str(params_file)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _cli_resume_refuses_each_file(params, tmp_path, files: list[str]):
    train_pairs(params)  # the shards, repurposed here once
    base = tmp_path / "base"
    make_adapter(params).save_pretrained(base)
    params.train.base_model = str(base)
    _configure(params, tmp_path / "run", 4)
    first = _cafe_train(params, tmp_path / "first.yaml")
    assert first.returncode == 0, first.stderr[-3000:]
    assert set(files) <= set(_checkpoint_files(tmp_path / "run")), _checkpoint_files(tmp_path / "run")
    for name in files:
        out = tmp_path / ("out-" + name.replace("/", "-"))
        shutil.copytree(tmp_path / "run", out)
        shutil.rmtree(out / "model", ignore_errors=True)
        marker = tmp_path / f"ran-{name.replace('/', '-')}"
        plant(ckpt.latest_checkpoint(out / "checkpoints") / name, marker)
        params.train.output, params.train.max_steps = str(out), 6
        run = _cafe_train(params, tmp_path / f"{out.name}.yaml")
        assert not marker.exists(), f"{name}: the payload ran"
        assert run.returncode != 0, f"{name}: resumed from a planted file"
        text = re.sub(r"\s*\n\[rank\d+\]:\s*", "", run.stderr + run.stdout)  # torchrun/rich line prefixes
        assert Path(name).name in text and "refused" in text, (name, text[-2000:])
        assert not (out / "model").exists()


@pytest.mark.slow
def test_cafe_train_refuses_a_payload_in_each_checkpoint_file(params, tmp_path):
    _cli_resume_refuses_each_file(params, tmp_path, STATE_FILES)


@pytest.mark.slow
def test_cafe_train_under_deepspeed_refuses_a_payload_in_each_partition_file(params, tmp_path):
    params.train.strategy = "deepspeed"
    params.train.deepspeed_config = str(ROOT / "configs" / "deepspeed" / "zero2.json")
    _cli_resume_refuses_each_file(params, tmp_path, ["rng_state_0.pt", "trainer_state.json",
                                                     "deepspeed/mp_rank_00_model_states.pt",
                                                     "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt"])
