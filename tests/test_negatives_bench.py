"""benchmarks/negatives.py (issue 20's comparison): every arm continues from one shared round-1 model for
the same round-2 budget, with its own negatives; the swaps (no model) are made once for all seeds; the
false-negative rate is judged against the world's ground truth; a re-run trains nothing."""

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks import negatives
from cafe.config import save_params
from cafe.mining.shards import read_negatives, read_version
from cafe.training.trainer import Trainer
from tests.conftest import make_adapter, pairs


def test_false_negative_rate_counts_a_negative_that_fits_the_query(params, tmp_path):
    from cafe.mining.embed import read_pairs
    from cafe.mining.shards import write_negatives

    pairs(params)
    ps = read_pairs(params.train.data, "train", params.train.captions, phash=False)
    # pair 0's negatives: itself (its own caption fits its image: a false negative by construction) and pair 1
    idx = np.full((len(ps), 2), -1)
    idx[0] = [0, 1]
    scores = np.zeros(idx.shape, dtype=np.float32)
    out = tmp_path / "neg"
    write_negatives(out, "train", ps.ids, (idx, scores), (idx, scores), "v", None, {}, {})
    rates = negatives.false_negative_rates(params.train.data, params.train.captions, str(out),
                                           Path(params.synth.out))
    for d in ("i2t", "t2i"):
        assert rates[d]["negatives"] == 2
        assert rates[d]["false_negatives"] >= 1  # the pair itself
        assert rates[d]["rate"] == rates[d]["false_negatives"] / 2


def test_arms_share_round_one_and_go_on_after_an_interruption(params, tmp_path, monkeypatch):
    pairs(params)
    params.train.batch_size, params.train.eval_every, params.train.max_steps = 8, 0, 1
    params.mine.k, params.mine.candidates, params.mine.cache_dir, params.mine.progress = 2, 8, "", False
    base = tmp_path / "base"
    make_adapter(params).save_pretrained(base)
    save_params(params, tmp_path / "params.yaml")
    fits = []
    real_fit = Trainer.fit

    def counting_fit(self, dataset, *a, **k):
        fits.append((self.cfg.output, self.cfg.negatives, str(self.cfg.base_model)))
        return real_fit(self, dataset, *a, **k)

    def fake_measure(model, p, eval_dir, out):
        assert "mmeb" in p.evaluate.parts
        return {"i2t_R@1": 0.5 if p.train.negatives else 0.4, "t2i_R@1": 0.3, "object_f1": 0.8}

    monkeypatch.setattr(Trainer, "fit", counting_fit)
    monkeypatch.setattr(negatives, "measure", fake_measure)
    out = tmp_path / "negatives.json"
    runs = tmp_path / "runs"
    argv = ["negatives", "--params", str(tmp_path / "params.yaml"), "--base", str(base), "--seeds", "0,1",
            "--round1-epochs", "1", "--round2-epochs", "1", "--runs", str(runs), "--out", str(out), "--eval", "dev"]
    monkeypatch.setattr(sys, "argv", argv)
    negatives.main()

    result = json.loads(out.read_text())
    # per seed: one round 1 from the base, then four round-2 runs from it
    assert len(fits) == 2 * 5
    for seed in (0, 1):
        miner = str(runs / f"round1-s{seed}" / "model")
        round2 = [f for f in fits if f[2] == miner]
        assert len(round2) == 4
        assert sorted(f[1] is None for f in round2) == [False, False, False, True]
    # the swaps need no model: one folder for both seeds; the mined arms have one per seed, from their miner
    assert sorted(k for k in result["mining"]) == ["mine:negatives-mined-s0", "mine:negatives-mined-s1",
                                                  "mine:negatives-swaps", "mine:negatives-unfiltered-s0",
                                                  "mine:negatives-unfiltered-s1"]
    assert read_version(runs / "negatives-mined-s1")["model"]["path"] == str(runs / "round1-s1" / "model")
    assert read_version(runs / "negatives-swaps")["source"] == "attribute_swaps"
    # rules off keep at least as many negatives as rules on, from the same miner
    kept = {arm: sum(len(t) for t, _ in read_negatives(runs / f"negatives-{arm}-s0").values())
            for arm in ("mined", "unfiltered")}
    assert kept["unfiltered"] >= kept["mined"] and kept["unfiltered"] > 0
    table = result["table"]
    assert table["mined"]["mean"]["i2t_R@1"] == 0.5 and table["in_batch"]["mean"]["i2t_R@1"] == 0.4
    assert table["unfiltered"]["false_negative_rate"]["i2t"] is not None
    trained = len(fits)
    negatives.main()  # everything measured: nothing trains or mines again
    assert len(fits) == trained
