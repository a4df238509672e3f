"""Drift monitor: decision rules, small windows, NaN / missing embeddings, traffic log windows, and a whole
monitor run with Evidently on synthetic embeddings (no model)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from cafe.config import MonitorConfig
from cafe.monitoring.decision import decide, wilson_upper
from cafe.monitoring.monitor import monitor, valid_embeddings
from cafe.serving.traffic import TrafficLog, chosen_rank

DIM = 16


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(rng, n=200):
    centre = rng.normal(size=DIM)
    img = _unit(centre + rng.normal(size=(n, DIM)))
    txt = _unit(centre + 0.3 + rng.normal(size=(n, DIM)))
    meta = {"dim": DIM, "top_k": 10, "recall_k": 5, "modality_gap": float(np.linalg.norm(img.mean(0) - txt.mean(0))),
            "validation": {"R@5": 0.8, "MRR": 0.6}, "probe": {"R@5": 0.7, "MRR": 0.5}}
    arrays = {"image_embeddings": img.astype(np.float32), "text_embeddings": txt.astype(np.float32),
              "top1_scores": rng.normal(0.6, 0.05, n).astype(np.float32)}
    return meta, arrays, centre


def _traffic(log, rng, centre, n, hit_rate, shift=0.0, feedback=None, top1=0.6, at=None):
    """n searches (+ n image requests) around ``centre + shift``; the chosen item ranks first with
    probability ``hit_rate`` and is absent from the results otherwise."""
    at = at or datetime.now(timezone.utc)
    searches = []
    for i in range(n):
        hit = rng.random() < hit_rate
        results = [{"id": f"g{j}.png", "score": 0.5} for j in range(10)]
        searches.append({"kind": "search", "query": f"q{i}", "embedding": _unit((centre + 0.3 + shift + rng.normal(size=DIM))[None])[0].tolist(),
                         "results": results, "top1_score": float(rng.normal(top1, 0.05)),
                         "_chosen": "g0.png" if hit else "elsewhere"})
    images = [{"kind": "image", "query": {"image_sha256": str(i)},
               "embedding": _unit((centre + shift + rng.normal(size=DIM))[None])[0].tolist(), "results": []}
              for i in range(n)]
    chosen = [s.pop("_chosen") for s in searches]
    logged = log.log_request(searches, "cafe", "cafe-v1", at=at)
    log.log_request(images, "cafe", "cafe-v1", at=at)
    for rec, c in list(zip(logged, chosen))[: n if feedback is None else feedback]:
        log.log_feedback(rec["request_id"], c, at=at)


def test_wilson_upper_bound():
    assert wilson_upper(0, 0, 0.95) == 1.0
    assert wilson_upper(50, 100, 0.95) == pytest.approx(0.582, abs=0.002)  # p + ~1.645 * 0.05
    assert wilson_upper(10, 100, 0.95) < wilson_upper(10, 20, 0.95)


def _signals(**over):
    base = {"feedback": {"judged": True, "n": 100, "recall": 0.8, "upper": 0.86, "reference": 0.8},
            "probe": {"recall": 0.7, "reference": 0.7, "drop": 0.0},
            "embedding_drift": {m: {"judged": True, "n": 100, "method": "mmd", "score": 0.0, "threshold": 0.015,
                                    "drifted": False} for m in ("text", "image")},
            "top1_drift": {"judged": True, "n": 100, "p_value": 0.5, "drifted": False, "mean": 0.6, "reference_mean": 0.6},
            "modality_gap": {"value": 0.3, "reference": 0.3, "change": 0.0},
            "invalid": {"count": 0, "total": 200, "fraction": 0.0}}
    base.update(over)
    return base


def test_decision_rules():
    cfg = MonitorConfig()
    assert decide(_signals(), cfg)["decision"] == "ok"
    drifted = _signals(embedding_drift={"text": {"judged": True, "n": 100, "method": "mmd", "score": 0.2,
                                                 "threshold": 0.015, "drifted": True}, "image": {"judged": False, "n": 3}})
    verdict = decide(drifted, cfg)
    assert verdict["decision"] == "warn" and "text embedding drift" in verdict["reasons"][0]
    assert any("image embedding drift" in n for n in verdict["not_judged"])
    # quality surely below reference - max drop -> retrain; a drop inside the confidence bound is not
    assert decide(_signals(feedback={"judged": True, "n": 100, "recall": 0.5, "upper": 0.58, "reference": 0.8}),
                  cfg)["decision"] == "retrain"
    assert decide(_signals(feedback={"judged": True, "n": 100, "recall": 0.6, "upper": 0.7, "reference": 0.8}),
                  cfg)["decision"] == "ok"
    assert decide(_signals(probe={"recall": 0.5, "reference": 0.7, "drop": 0.2}), cfg)["decision"] == "retrain"
    assert decide(_signals(modality_gap={"value": 0.5, "reference": 0.3, "change": 0.2}), cfg)["decision"] == "warn"
    assert decide(_signals(invalid={"count": 30, "total": 200, "fraction": 0.15}), cfg)["decision"] == "warn"


def test_small_window_is_not_judged():
    cfg = MonitorConfig()
    small = _signals(feedback={"judged": False, "n": 4, "recall": 0.0, "upper": 0.6, "reference": 0.8},
                     embedding_drift={m: {"judged": False, "n": 4} for m in ("text", "image")},
                     top1_drift={"judged": False, "n": 4}, modality_gap={"value": 0.9, "reference": 0.3, "change": None})
    verdict = decide(small, cfg)
    assert verdict["decision"] == "ok" and not verdict["reasons"]
    assert len(verdict["not_judged"]) == 4 and "4 labelled queries" in verdict["not_judged"][0]


def test_valid_embeddings_reports_nan_missing_and_wrong_dimension():
    records = [{"request_id": "a", "embedding": [0.1] * DIM}, {"request_id": "b", "embedding": None},
               {"request_id": "c", "embedding": [None] + [0.1] * (DIM - 1)}, {"request_id": "d", "embedding": [0.1] * 3},
               {"request_id": "e", "embedding": ["x"] * DIM}, {"request_id": "f"}]
    rows, keep, dropped = valid_embeddings(records, DIM)
    assert rows.shape == (1, DIM) and keep == [0]
    assert {d["request_id"]: d["why"] for d in dropped} == {
        "b": "missing", "c": "NaN or inf", "d": f"dimension 3 != {DIM}", "e": "not numeric", "f": "missing"}


def test_traffic_window_by_time_and_count_with_feedback(tmp_path):
    log = TrafficLog(tmp_path / "traffic")
    now = datetime.now(timezone.utc)
    old = log.log_request([{"kind": "search", "query": "old", "results": [{"id": "x"}]}], "cafe", "cafe-v1",
                          at=now - timedelta(hours=30))
    new = log.log_request([{"kind": "search", "query": f"n{i}", "results": [{"id": "x"}, {"id": "y"}]} for i in range(3)],
                          "cafe", "cafe-v2", at=now - timedelta(hours=1))
    log.log_feedback(new[1]["request_id"], "y")
    log.log_feedback(old[0]["request_id"], "x", at=now - timedelta(hours=29))
    w = log.read_window(hours=24, now=now)
    assert [r["query"] for r in w.records] == ["n0", "n1", "n2"]
    assert [r["request_id"] for r in w.labelled] == [new[1]["request_id"]]
    assert chosen_rank(w.labelled[0]) == 2.0
    assert {r["model_version"] for r in w.records} == {"cafe-v2"}
    assert len(log.read_window(hours=0, now=now).records) == 4
    assert [r["query"] for r in log.read_window(hours=0, max_requests=2, now=now).records] == ["n1", "n2"]
    (tmp_path / "traffic" / "requests" / "20990101").mkdir()
    (tmp_path / "traffic" / "requests" / now.strftime("%Y%m%d") / f"{now:%H%M%S.%f}-bad.json").write_text("{not json")
    assert len(log.read_window(hours=24, now=now + timedelta(seconds=1)).unreadable) == 1


@pytest.mark.parametrize("kind", [pytest.param("same", marks=pytest.mark.slow), "harmful"])
def test_monitor_run_decides_and_writes_report(tmp_path, kind):
    rng = np.random.default_rng(0)
    meta, arrays, centre = _reference(rng)
    log = TrafficLog(tmp_path / "traffic")
    if kind == "same":
        _traffic(log, rng, centre, 120, hit_rate=0.8)
    else:
        _traffic(log, rng, centre, 120, hit_rate=0.3, shift=1.5, top1=0.45)
    cfg = MonitorConfig(drift_method="model", drift_threshold=0.65, min_requests=50, min_feedback=30,
                        drift_pca_components=None)
    summary = monitor(log.read_window(hours=1), meta, arrays, cfg, tmp_path / "out",
                      probe={"R@5": 0.7, "MRR": 0.5})
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["decision"] == summary["decision"]
    if kind == "same":
        assert summary["decision"] == "ok", summary["reasons"]
    else:
        assert summary["decision"] == "retrain"
        assert any("feedback R@5" in r for r in summary["reasons"])
        assert any("embedding drift" in r for r in summary["reasons"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<html" in html.lower() and "top1_score" in html
    # self-contained: no script, stylesheet or image loaded from the network (documentation links are fine)
    assert not re.search(r'<(script|link|img)\b[^>]*\b(src|href)="https?://', html)
    assert (tmp_path / "out" / "report_images.html").is_file()
    page = (tmp_path / "out" / "decision.html").read_text()  # the page a person reads links both reports
    assert f"<b>{summary['decision']}</b>" in page and "href='report.html'" in page and "href='report_images.html'" in page
    assert len(saved["modality_gap_history"]) == 1


def test_monitor_survives_nan_embeddings_and_tiny_window(tmp_path):
    rng = np.random.default_rng(1)
    meta, arrays, centre = _reference(rng)
    log = TrafficLog(tmp_path / "traffic")
    _traffic(log, rng, centre, 8, hit_rate=0.0, feedback=5)
    log.log_request([{"kind": "search", "query": "nan", "embedding": [float("nan")] * DIM, "results": [],
                      "top1_score": None},
                     {"kind": "image", "query": {}, "embedding": None, "results": []}], "cafe", "cafe-v1")
    summary = monitor(log.read_window(hours=1), meta, arrays, MonitorConfig(), tmp_path / "out")
    assert summary["decision"] == "warn"  # 2 of 18 embeddings invalid > 5%; quality not judged (5 < 30)
    assert summary["signals"]["invalid"]["count"] == 2
    assert any("NaN or missing" in r for r in summary["reasons"])
    assert any("5 labelled queries" in n for n in summary["not_judged"])
    assert "reports" in summary and summary["reports"] == {}
