"""Slow guard of the base's skills: a reduced base learns yes/no only with per-sample L_lm averaging."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from cafe.config import Params, load_params
from cafe.data import shapes
from cafe.distributed import DistEnv
from cafe.models import load_adapter
from cafe.training.pretrain import pretrain
from cafe.training.probes import probe

# From the full-size measurement (docs/understanding.md): per-sample AUC 0.87 after 1200 steps, per-token 0.50
# (and 0.51 at step 600 of the per-sample run). This reduced configuration itself has not been measured yet
# (the shared cores did not allow it before the deadline): re-measure with
# `python tests/test_understanding_slow.py DIR sample` / `... DIR token 1000 DIR/base-sample/warmed` and set
# the floor between the two.
YESNO_AUC_FLOOR = 0.70


def reduced_params(root: Path, lm_average: str, steps: int = 1000, vision_init: str = "") -> Params:
    """The embedded default's model (params.yaml: 96 px images, one 32 px patch per grid cell) on a reduced
    world (1500 training images, its own seeds) with a shorter warm-up and pretraining."""
    p = load_params(Path(__file__).parents[1] / "params.yaml")
    p.synth = p.synth.model_copy(update={"out": str(root / "world"), "seed": 7, "eval_seed": 8, "train_images": 1500,
                                         "dev_seed": None, "retrieval_images": 20,
                                         "probe_images": 60})
    p.pretrain.data = str(root / "world" / "train" / "instructions.json")
    p.pretrain.output = str(root / f"base-{lm_average}")
    p.pretrain.vision_steps, p.pretrain.steps, p.pretrain.save_every = 300, steps, 0
    p.pretrain.lm_average, p.pretrain.vision_init = lm_average, vision_init
    return p


def reduced_base(root: Path, lm_average: str, steps: int = 1000, vision_init: str = "") -> dict:
    """Pretrain a reduced base (the world generated once under ``root``) and probe its yes/no AUC."""
    params = reduced_params(root, lm_average, steps, vision_init)
    if not (Path(params.synth.out) / "eval" / "mmstar.jsonl").is_file():
        shapes.generate(params.synth)
    model = pretrain(params, DistEnv(), resume=False)
    adapter = load_adapter(model, params.prompts, params.model)
    return probe(adapter, Path(params.synth.out) / "eval", generate=False)


@pytest.mark.slow
def test_per_sample_averaging_teaches_yes_no_and_per_token_does_not(tmp_path):
    sample = reduced_base(tmp_path, "sample")
    # the same warmed-up vision side: only the language-loss averaging differs
    token = reduced_base(tmp_path, "token", vision_init=str(tmp_path / "base-sample" / "warmed"))
    assert sample["yesno_auc"] >= YESNO_AUC_FLOOR, sample
    assert token["yesno_auc"] < YESNO_AUC_FLOOR, token  # the control: the same budget per token fails it


if __name__ == "__main__":  # measure: python tests/test_understanding_slow.py OUT_DIR sample|token [steps]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    import time

    start = time.perf_counter()
    print(reduced_base(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1000,
                       sys.argv[4] if len(sys.argv) > 4 else ""), f"{time.perf_counter() - start:.0f}s")
