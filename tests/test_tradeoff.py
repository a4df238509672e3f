"""benchmarks/tradeoff.py (paper Table 7 as an experiment): every arm gets the same search, keeps its best
point by its own criterion, re-uses the search's seed-0 model for the final world, and goes on after an
interruption without training again."""

import json
import sys

import pytest

from benchmarks import tradeoff
from cafe.config import save_params
from cafe.training.trainer import Trainer
from tests.conftest import make_adapter, pairs


def test_grid_and_criterion():
    assert tradeoff.grid("0.1", [1e-3, 2e-3], [0.02, 0.05]) == [(1e-3, 0.02), (1e-3, 0.05), (2e-3, 0.02),
                                                                (2e-3, 0.05)]
    assert tradeoff.grid("lm", [1e-3, 2e-3], [0.02, 0.05]) == [(1e-3, None), (2e-3, None)]  # no L_con: no tau
    m = {"i2t_R@1": 0.6, "t2i_R@1": 0.4, "mmstar_accuracy": 0.3, "pope_avg_accuracy": 0.9, "object_f1": 0.6}
    assert tradeoff.criterion("0", m) == pytest.approx(0.5)
    assert tradeoff.criterion("lm", m) == pytest.approx(0.6)
    mean, std = tradeoff.summarise([{"i2t_R@1": 0.2}, {"i2t_R@1": 0.4}])
    assert mean["i2t_R@1"] == pytest.approx(0.3) and std["i2t_R@1"] == pytest.approx(0.1414, abs=1e-3)


def test_search_chooses_per_arm_and_reuses_trained_models(params, tmp_path, monkeypatch):
    pairs(params)
    base = tmp_path / "base"
    make_adapter(params).save_pretrained(base)
    save_params(params, tmp_path / "params.yaml")
    fits, measured = [], []
    real_fit = Trainer.fit

    def counting_fit(self, *a, **k):
        fits.append(self.cfg.output)
        return real_fit(self, *a, **k)

    def fake_measure(model, p, eval_dir, out):
        # retrieval best at the larger LR and the lower temperature, understanding best at the smaller LR
        lr, tau = p.train.optim.lr, p.train.objective.temperature
        measured.append((str(model), eval_dir))
        r1 = lr * 100 + (0.1 - tau) + (0.05 if eval_dir == "final" else 0.0)
        return {"i2t_R@1": r1, "t2i_R@1": r1, "mmstar_accuracy": 1 - lr * 100, "pope_avg_accuracy": 0.5,
                "object_f1": 0.5, "pope_invalid": 0.0, "mmstar_invalid": 0.0, "modality_gap": 0.1}

    monkeypatch.setattr(Trainer, "fit", counting_fit)
    monkeypatch.setattr(tradeoff, "measure", fake_measure)
    out = tmp_path / "tradeoff.json"
    argv = ["tradeoff", "--params", str(tmp_path / "params.yaml"), "--base", str(base), "--steps", "1",
            "--arms", "0.1,lm", "--lrs", "1e-3,3e-3", "--temperatures", "0.02,0.05", "--seeds", "0,1",
            "--search-eval", "search", "--eval", "final", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    tradeoff.main()

    table = json.loads(out.read_text())["table"]
    assert table["0.1"]["chosen"] == {"lr": 3e-3, "temperature": 0.02, "criterion": pytest.approx(0.38)}
    assert table["lm"]["chosen"]["lr"] == 1e-3 and table["lm"]["chosen"]["temperature"] is None
    assert len(table["0.1"]["search"]) == 4 and len(table["lm"]["search"]) == 2
    # 4 + 2 search runs, then seed 1 of each chosen point; seed 0 is the search's model, measured again
    assert len(fits) == 8
    assert table["0.1"]["mean"]["i2t_R@1"] == pytest.approx(0.38 + 0.05)
    finals = [m for m in measured if m[1] == "final"]
    assert len(finals) == 4 and any("0.1-lr0.003-t0.02-s0" in m[0] for m in finals)
    trained_once = len(fits)
    tradeoff.main()  # everything measured already: nothing trains or measures again
    assert len(fits) == trained_once and len([m for m in measured if m[1] == "final"]) == 4
