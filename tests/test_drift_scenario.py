"""The drift scenario, short: a tiny model trained briefly on the in-distribution world, its reference, and
three windows of each kind judged with params.yaml's thresholds; most harmful windows must ask for
retraining and none of the others (benchmarks/drift.py runs this over 20 seeds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cafe.config import load_params
from tests.conftest import SMALL_MODEL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def one_thread():
    """Like the benchmark: one torch thread (two oversubscribe a shared 2-core machine badly here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_harmful_shift_retrains_the_others_do_not(tmp_path, one_thread):
    from cafe.data import shapes
    from cafe.data.drift import KINDS, training_pairs, write_world
    from cafe.data.pair_folder import write_pair_folder
    from cafe.models import build_tiny, load_adapter
    from cafe.monitoring.monitor import monitor
    from cafe.monitoring.reference import build_reference, probe_metrics
    from cafe.monitoring.scenario import replay_world, train_contrastive

    p = load_params(ROOT / "params.yaml")
    p.model.tiny = SMALL_MODEL.model_copy()
    cfg = p.monitor
    cfg.report = False
    p.repurpose.workers, p.repurpose.progress = 1, False
    pairs = training_pairs(write_world(tmp_path / "train", "in_distribution", 400, seed=10_000))
    assert write_pair_folder(pairs, tmp_path / "pairs", p.prompts.caption) == 2000
    model = train_contrastive(p, tmp_path / "pairs", tmp_path / "run", 200, progress=False, init=lambda: build_tiny(
        shapes.vocabulary_corpus(), 64, p.model.tiny, p.prompts, p.model, seed=0))
    adapter = load_adapter(model, p.prompts, p.model, fresh_tuning=False)
    adapter.model.eval()
    cfg.probe = str(write_world(tmp_path / "reference", "in_distribution", 150, seed=20_000))
    cfg.probe_images, cfg.reference_images = 50, 100
    meta, arrays = build_reference(adapter, cfg, top_k=10)
    assert meta["validation"]["R@5"] > 0.5, meta  # the model learned the training world
    probe = probe_metrics(adapter, cfg, 10)
    decisions = {kind: [] for kind in KINDS}
    for kind in KINDS:
        for seed in range(3):
            log = replay_world(adapter, tmp_path, kind, seed, 100, "v1")
            summary = monitor(log.read_window(), meta, arrays, cfg, tmp_path / "monitor" / f"{kind}-{seed}", probe=probe)
            decisions[kind].append((summary["decision"], summary["signals"]["feedback"]["recall"]))
    why = (meta["validation"], decisions)
    # the benchmark's rates: harmful windows mostly ask for retraining (0.85 over 20 seeds), the others never
    assert sum(d == "retrain" for d, _ in decisions["harmful"]) >= 2, why
    assert all(d != "retrain" for kind in ("in_distribution", "harmless") for d, _ in decisions[kind]), why
    mean = {kind: sum(r for _, r in v) / len(v) for kind, v in decisions.items()}
    assert mean["harmful"] < mean["in_distribution"] - 0.1, why
