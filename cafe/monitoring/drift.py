"""Evidently computations: embedding drift (model-based, MMD, distance or ratio, by config) and the drift of
the top-1 similarity distribution (K-S), each as one Evidently report whose HTML is self-contained."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cafe.config import MonitorConfig

DEFAULT_THRESHOLDS = {"model": 0.55, "mmd": 0.015, "distance": 0.2, "ratio": 0.2}


def drift_method(cfg: MonitorConfig):
    from evidently.metrics import embeddings as E

    kwargs = {"pca_components": cfg.drift_pca_components}
    if cfg.drift_threshold is not None:
        kwargs["threshold"] = cfg.drift_threshold
    if cfg.drift_method == "model":
        return E.ModelDriftMethod(**kwargs)
    if cfg.drift_method == "mmd":
        return E.MMDDriftMethod(**kwargs)
    if cfg.drift_method == "distance":
        return E.DistanceDriftMethod(dist="cosine", **kwargs)
    return E.RatioDriftMethod(**kwargs)


def _frame(emb: np.ndarray, prefix: str, extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(emb, columns=[f"{prefix}{i}" for i in range(emb.shape[1])])
    for name, values in (extra or {}).items():
        frame[name] = values
    return frame


def run_report(name: str, reference: np.ndarray, current: np.ndarray, cfg: MonitorConfig,
               ref_scores: np.ndarray | None = None, cur_scores: np.ndarray | None = None):
    """One Evidently report: embedding drift of ``name`` embeddings (and, with scores, ValueDrift of the
    top-1 similarity). Returns ``(snapshot, results)`` with the drift decisions made against the thresholds."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift

    cols = [f"{name}_{i}" for i in range(reference.shape[1])]
    numeric = list(cols)
    metrics = [EmbeddingsDrift(embeddings_name=name, drift_method=drift_method(cfg))]
    ref_extra = cur_extra = None
    if ref_scores is not None and cur_scores is not None:
        numeric.append("top1_score")
        metrics.append(ValueDrift(column="top1_score", method="ks", threshold=cfg.similarity_p_value))
        ref_extra, cur_extra = {"top1_score": ref_scores}, {"top1_score": cur_scores}
    definition = DataDefinition(numerical_columns=numeric, embeddings={name: cols})
    ref = Dataset.from_pandas(_frame(reference, f"{name}_", ref_extra), data_definition=definition)
    cur = Dataset.from_pandas(_frame(current, f"{name}_", cur_extra), data_definition=definition)
    snapshot = Report(metrics).run(reference_data=ref, current_data=cur)
    values = [float(m["value"]) for m in snapshot.dict()["metrics"]]
    threshold = cfg.drift_threshold if cfg.drift_threshold is not None else DEFAULT_THRESHOLDS[cfg.drift_method]
    results = {"embedding": {"judged": True, "n": int(len(current)), "method": cfg.drift_method,
                             "score": values[0], "threshold": threshold, "drifted": values[0] > threshold}}
    if len(values) > 1:
        results["top1"] = {"judged": True, "n": int(len(cur_scores)), "p_value": values[1],
                           "drifted": values[1] < cfg.similarity_p_value, "mean": float(np.mean(cur_scores)),
                           "reference_mean": float(np.mean(ref_scores))}
    return snapshot, results
