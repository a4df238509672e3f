"""The gate: floors, regressions judged with bootstrap intervals, missing/NaN metrics, CLI exit codes."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cafe.cli import app
from cafe.config import GateConfig
from cafe.evaluation.bootstrap import confidence_intervals
from cafe.evaluation.gate import run_gate
from cafe.evaluation.per_item import PerItem


def _mmstar(correct) -> PerItem:
    items = PerItem()
    items.add("mmstar", {"categories": ["all"]}, correct=np.asarray(correct, dtype=np.int8),
              category=np.zeros(len(correct), dtype=np.int16))
    return items


def _check(result, metric, kind):
    return next(c for c in result["checks"] if c["metric"] == metric and c["kind"] == kind)


def test_bootstrap_interval_matches_the_binomial_width_and_is_seeded():
    rng = np.random.default_rng(0)
    items = _mmstar(rng.permutation([1] * 200 + [0] * 200))
    ci = confidence_intervals(items, resamples=2000, seed=0)["mmstar_accuracy"]
    assert ci[0] < 0.5 < ci[1]
    # normal approximation: 2 * 1.96 * sqrt(0.25 / 400) = 0.098
    assert ci[1] - ci[0] == pytest.approx(0.098, abs=0.015)
    assert confidence_intervals(items, resamples=2000, seed=0)["mmstar_accuracy"] == ci
    small = _mmstar([1, 0] * 25)
    wide = confidence_intervals(small, resamples=2000)["mmstar_accuracy"]
    assert wide[1] - wide[0] > ci[1] - ci[0]


def test_constant_results_have_a_zero_width_interval():
    ci = confidence_intervals(_mmstar([1] * 30), resamples=200)["mmstar_accuracy"]
    assert ci == (1.0, 1.0)


def test_floor_pass_and_fail():
    cfg = GateConfig(floors={"mmstar_accuracy": 0.6, "modality_gap": 0.5}, lower_is_better=["modality_gap"])
    items = _mmstar([1] * 7 + [0] * 3)
    result = run_gate({"mmstar_accuracy": 0.7, "modality_gap": 0.4}, None, cfg, per_item=items)
    assert result["passed"]
    assert _check(result, "mmstar_accuracy", "floor")["ci"] is not None
    result = run_gate({"mmstar_accuracy": 0.7, "modality_gap": 0.6}, None, cfg, per_item=items)
    assert not result["passed"] and result["summary"]["failed_checks"] == ["modality_gap (floor)"]


def _pope_invalid(valid) -> PerItem:
    valid = np.asarray(valid, dtype=np.int8)
    items = PerItem()
    items.add("pope", {"splits": ["random"]}, pred=np.ones(len(valid), dtype=np.int8),
              label=np.ones(len(valid), dtype=np.int8), split=np.zeros(len(valid), dtype=np.int16), valid=valid)
    return items


def test_ceiling_of_an_invalid_answer_rate():
    cfg = GateConfig(max_value={"pope_invalid_rate": 0.1})
    ok = _pope_invalid([1] * 95 + [0] * 5)
    result = run_gate(ok.metrics(), None, cfg, per_item=ok)
    check = _check(result, "pope_invalid_rate", "ceiling")
    assert result["passed"] and check["value"] == pytest.approx(0.05) and check["ci"][0] < 0.05 < check["ci"][1]
    collapsed = _pope_invalid([0] * 100)  # every reply a caption fragment: POPE reads them all as "yes"
    result = run_gate(collapsed.metrics(), None, cfg, per_item=collapsed)
    assert not result["passed"] and result["summary"]["failed_checks"] == ["pope_invalid_rate (ceiling)"]
    assert "pope_invalid_rate" in result["lower_is_better"]
    assert "missing" in _check(run_gate({}, None, cfg), "pope_invalid_rate", "ceiling")["message"]


def test_a_rise_of_a_lower_is_better_metric_is_the_regression():
    # no lower_is_better entry needed: *_invalid_rate metrics are lower-is-better by name
    cfg = GateConfig(max_regression={"pope_invalid_rate": 0.05}, lower_is_better=[], resamples=500)
    ref = _pope_invalid([1] * 100)
    worse, better = _pope_invalid([0] * 30 + [1] * 70), _pope_invalid([1] * 100)
    result = run_gate(worse.metrics(), ref.metrics(), cfg, per_item=worse, reference_per_item=ref)
    check = _check(result, "pope_invalid_rate", "regression")
    assert not result["passed"] and check["delta"] == pytest.approx(-0.3) and check["delta_ci"][1] < -0.05
    assert "lower is better" in check["message"]
    improved = run_gate(ref.metrics(), worse.metrics(), cfg, per_item=better, reference_per_item=worse)
    assert improved["passed"] and _check(improved, "pope_invalid_rate", "regression")["delta"] == pytest.approx(0.3)


def test_missing_and_nan_metrics_fail_with_a_message():
    cfg = GateConfig(floors={"object_f1": 0.1, "i2t_R@1": 0.1}, max_regression={"throne_f1": 0.1})
    result = run_gate({"i2t_R@1": float("nan"), "throne_f1": 0.5}, {"throne_f1": float("nan")}, cfg)
    assert not result["passed"] and result["summary"]["failed"] == 3
    assert "missing" in _check(result, "object_f1", "floor")["message"]
    assert "NaN" in _check(result, "i2t_R@1", "floor")["message"]
    assert "NaN in the reference" in _check(result, "throne_f1", "regression")["message"]
    result = run_gate({"throne_f1": 0.5}, {}, cfg)
    assert "missing in the reference" in _check(result, "throne_f1", "regression")["message"]


def test_regression_check_without_reference_fails_unless_allowed():
    cfg = GateConfig(max_regression={"mmstar_accuracy": 0.1})
    assert not run_gate({"mmstar_accuracy": 0.5}, None, cfg)["passed"]
    assert run_gate({"mmstar_accuracy": 0.5}, None, cfg.model_copy(update={"require_reference": False}))["passed"]


def test_a_drop_within_the_noise_passes_a_real_drop_fails():
    ref_correct = np.array([1] * 30 + [0] * 10)
    cfg = GateConfig(max_regression={"mmstar_accuracy": 0.0}, resamples=500)
    # one answer of forty lost: paired bootstrap includes a zero change -> not a regression
    slightly = ref_correct.copy()
    slightly[0] = 0
    ref, cand = _mmstar(ref_correct), _mmstar(slightly)
    result = run_gate(cand.metrics(), ref.metrics(), cfg, per_item=cand, reference_per_item=ref)
    check = _check(result, "mmstar_accuracy", "regression")
    assert result["passed"] and check["delta"] == pytest.approx(-1 / 40) and "paired" in check["message"]
    # without per-item results the same point drop is read at face value and fails
    assert not run_gate(cand.metrics(), ref.metrics(), cfg)["passed"]
    # ten answers lost, allowed drop 0.1: the whole interval lies below -0.1 -> fails
    worse = ref_correct.copy()
    worse[:10] = 0
    cand = _mmstar(worse)
    result = run_gate(cand.metrics(), ref.metrics(), cfg.model_copy(update={"max_regression": {"mmstar_accuracy": 0.1}}),
                      per_item=cand, reference_per_item=ref)
    check = _check(result, "mmstar_accuracy", "regression")
    assert not result["passed"] and check["delta_ci"][1] < -0.1


def _write_eval(folder, correct):
    folder.mkdir(parents=True)
    items = _mmstar(correct)
    items.save(folder / "per_item.npz")
    (folder / "metrics.json").write_text(json.dumps(items.metrics()))


def test_cli_writes_gate_json_and_exits_nonzero_on_failure(tmp_path):
    _write_eval(tmp_path / "ref", [1] * 30 + [0] * 10)
    _write_eval(tmp_path / "good", [1] * 31 + [0] * 9)
    _write_eval(tmp_path / "bad", [1] * 10 + [0] * 30)
    (tmp_path / "params.yaml").write_text("gate:\n  floors: {mmstar_accuracy: 0.5}\n  max_regression: {mmstar_accuracy: 0.05}\n")
    runner = CliRunner()
    for name, code in (("good", 0), ("bad", 1)):
        res = runner.invoke(app, ["gate", "--metrics", str(tmp_path / name / "metrics.json"), "--reference",
                                  str(tmp_path / "ref" / "metrics.json"), "--out", str(tmp_path / f"gate_{name}"),
                                  "-p", str(tmp_path / "params.yaml")])
        assert res.exit_code == code, res.output
        gate = json.loads((tmp_path / f"gate_{name}" / "gate.json").read_text())
        assert gate["passed"] is (code == 0) and len(gate["checks"]) == 2
        assert all({"metric", "value", "ci", "threshold", "passed", "message"} <= set(c) for c in gate["checks"])
    res = runner.invoke(app, ["gate", "--metrics", str(tmp_path / "nowhere.json"), "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and "run `cafe evaluate` first" in res.output


def test_cli_gate_compares_with_the_registry_production_model_once_there_is_one(tmp_path):
    from cafe.registry import Registry

    _write_eval(tmp_path / "base", [1] * 20 + [0] * 20)
    _write_eval(tmp_path / "prod", [1] * 38 + [0] * 2)
    _write_eval(tmp_path / "cand", [1] * 24 + [0] * 16)
    (tmp_path / "params.yaml").write_text(
        f"registry: {{store: {tmp_path / 'reg'}, name: m}}\ngate:\n  max_regression: {{mmstar_accuracy: 0.05}}\n")
    args = ["gate", "--metrics", str(tmp_path / "cand" / "metrics.json"), "--reference",
            str(tmp_path / "base" / "metrics.json"), "-p", str(tmp_path / "params.yaml")]
    runner = CliRunner()
    before = runner.invoke(app, [*args, "--out", str(tmp_path / "g1")])
    assert before.exit_code == 0, before.output  # no production model yet: better than the base
    assert json.loads((tmp_path / "g1" / "gate.json").read_text())["reference"].startswith("file ")

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    reg = Registry(tmp_path / "reg")
    reg.register(model, "m", metrics=tmp_path / "prod" / "metrics.json", gate={"passed": True, "checks": []},
                 data_version="d0", extra_files={"per_item.npz": tmp_path / "prod" / "per_item.npz"},
                 alias="production")
    after = runner.invoke(app, [*args, "--out", str(tmp_path / "g2")])
    assert after.exit_code == 1, after.output  # 0.60 against production's 0.95: a real regression
    gate = json.loads((tmp_path / "g2" / "gate.json").read_text())
    assert gate["reference"] == "registry m v1 (production)"
    check = _check(gate, "mmstar_accuracy", "regression")
    assert check["reference"] == pytest.approx(0.95) and check["delta_ci"] is not None  # paired, from per_item.npz
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "g3"), "--no-production"]).exit_code == 0
