"""Shared fixtures: a small shapes world and a small tiny model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cafe.config import Params, SynthConfig, TinyModelConfig
from cafe.data import shapes
from cafe.models import build_tiny
from cafe.processes import short_socket_dir

torch.set_num_threads(2)
short_socket_dir()  # tests that fork loader workers or pools directly, under a long TMPDIR too

pytest_plugins = ["tests.s3_server"]

SMALL_MODEL = TinyModelConfig(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=2,
                              text_heads=2, text_kv_heads=1, text_intermediate=64)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A shapes world of 160 training images and 40 retrieval images."""
    out = tmp_path_factory.mktemp("shapes")
    cfg = SynthConfig(out=str(out), train_images=160, retrieval_images=40, probe_images=10)
    shapes.generate(cfg)
    return out


@pytest.fixture()
def params(world, tmp_path) -> Params:
    p = Params()
    p.synth.out = str(world)
    p.model.tiny = SMALL_MODEL.model_copy()
    p.repurpose.input = str(world / "train" / "instructions.json")
    p.repurpose.image_root = str(world / "train")
    p.repurpose.out = str(tmp_path / "pairs")
    p.repurpose.workers, p.repurpose.progress = 1, False
    p.train.data = p.repurpose.out
    p.train.output = str(tmp_path / "run")
    p.evaluate.data = str(world / "eval")
    return p


def pairs(params: Params, split: str = "train"):
    """The repurposed training pairs of ``params`` (repurposed first unless the shards exist)."""
    from cafe.data.pairs import pairs_dataset
    from cafe.data.repurpose import repurpose
    from cafe.data.shards import DATA_VERSION

    if not (Path(params.repurpose.out) / DATA_VERSION).is_file():
        repurpose(params.repurpose)
    return pairs_dataset(params, split)


def make_adapter(params: Params, seed: int = 0):
    return build_tiny(shapes.vocabulary_corpus(), params.synth.image_size, params.model.tiny, params.prompts,
                      params.model, seed=seed)


@pytest.fixture()
def adapter(params):
    return make_adapter(params)
