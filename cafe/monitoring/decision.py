"""The monitor's decision from its signals: ``ok``, ``warn`` or ``retrain``, with the reasons.

- ``retrain``: retrieval quality is surely worse than the reference: the one-sided upper confidence bound of
  feedback R@K lies more than ``max_feedback_drop`` below the reference, or the probe set's R@K (re-embedded
  with the served model) dropped more than ``max_probe_drop``.
- ``warn``: the inputs moved but quality did not (provably) fall: embedding drift, a shifted top-1 similarity
  distribution, a moved modality gap, or too many NaN / missing embeddings.
- A signal whose window is too small is not judged and says so; it never raises an alarm.
"""

from __future__ import annotations

import math

from cafe.config import MonitorConfig


def wilson_upper(successes: int, n: int, confidence: float) -> float:
    """One-sided upper Wilson bound of a proportion (1.0 for n = 0)."""
    if n == 0:
        return 1.0
    from statistics import NormalDist

    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def decide(signals: dict, cfg: MonitorConfig) -> dict:
    """``{"decision", "reasons", "not_judged"}`` from the signals :func:`cafe.monitoring.monitor.signals` computes."""
    retrain, warn, not_judged = [], [], []
    k = cfg.recall_k

    fb = signals.get("feedback") or {}
    if not fb.get("judged"):
        not_judged.append(f"feedback: {fb.get('n', 0)} labelled queries < monitor.min_feedback={cfg.min_feedback}")
    elif fb.get("reference") is not None and fb["upper"] < fb["reference"] - cfg.max_feedback_drop:
        retrain.append(f"feedback R@{k} {fb['recall']:.3f} (upper {cfg.confidence:.0%} bound {fb['upper']:.3f}, "
                       f"n={fb['n']}) is below reference {fb['reference']:.3f} - {cfg.max_feedback_drop}")

    probe = signals.get("probe")
    if probe and probe.get("reference") is not None and probe.get("drop") is not None:
        if probe["drop"] > cfg.max_probe_drop:
            retrain.append(f"probe R@{k} {probe['recall']:.3f} dropped {probe['drop']:.3f} from "
                           f"{probe['reference']:.3f} (> {cfg.max_probe_drop})")

    for name in ("text", "image"):
        drift = (signals.get("embedding_drift") or {}).get(name) or {}
        if not drift.get("judged"):
            not_judged.append(f"{name} embedding drift: {drift.get('n', 0)} embeddings < "
                              f"monitor.min_requests={cfg.min_requests}")
        elif drift.get("drifted"):
            warn.append(f"{name} embedding drift ({drift['method']}): score {drift['score']:.3f} > "
                        f"{drift['threshold']:.3f}")

    top1 = signals.get("top1_drift") or {}
    if not top1.get("judged"):
        not_judged.append(f"top-1 similarity drift: {top1.get('n', 0)} searches < monitor.min_requests={cfg.min_requests}")
    elif top1.get("drifted"):
        warn.append(f"top-1 similarity distribution shifted (K-S p={top1['p_value']:.2g} < {cfg.similarity_p_value}; "
                    f"mean {top1['mean']:.3f} vs reference {top1['reference_mean']:.3f})")

    gap = signals.get("modality_gap") or {}
    if gap.get("change") is not None and abs(gap["change"]) > cfg.max_gap_change:
        warn.append(f"modality gap {gap['value']:.3f} moved {gap['change']:+.3f} from {gap['reference']:.3f} "
                    f"(> {cfg.max_gap_change})")

    invalid = signals.get("invalid") or {}
    if invalid.get("fraction", 0.0) > cfg.max_invalid_fraction:
        warn.append(f"{invalid['count']} of {invalid['total']} logged embeddings are NaN or missing "
                    f"({invalid['fraction']:.1%} > {cfg.max_invalid_fraction:.1%})")

    decision = "retrain" if retrain else "warn" if warn else "ok"
    return {"decision": decision, "reasons": retrain + warn, "not_judged": not_judged}
