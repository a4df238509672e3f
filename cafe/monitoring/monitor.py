"""`cafe monitor`: one traffic window against the served version's reference -> summary JSON, Evidently HTML
and a decision page linking them (:mod:`cafe.monitoring.page`).

Signals: embedding drift of the text queries and the query images, drift of the top-1 similarity
distribution, retrieval quality on the feedback-labelled queries (R@K and MRR@top_k of the chosen item), the
probe set's R@K re-embedded with the served model, the modality gap (also kept over time in ``history/``),
and the count of NaN / missing embeddings (dropped before any computation, reported). The decision rules
are in :mod:`cafe.monitoring.decision`.
"""

from __future__ import annotations

import json
import math
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cafe.config import MonitorConfig
from cafe.monitoring.decision import decide, wilson_upper
from cafe.monitoring.page import decision_page
from cafe.serving.traffic import Window, chosen_rank
from cafe.storage import ObjectStore, join, open_store


def valid_embeddings(records: list[dict], dim: int) -> tuple[np.ndarray, list[int], list[dict]]:
    """Rows of finite embeddings of the reference's dimension, their record indices, and what was dropped."""
    rows, keep, dropped = [], [], []
    for i, rec in enumerate(records):
        emb = rec.get("embedding")
        why = None
        if emb is None:
            why = "missing"
        else:
            try:
                vec = np.asarray([np.nan if v is None else v for v in emb], dtype=np.float64)
            except (TypeError, ValueError):
                vec, why = None, "not numeric"
            if vec is not None and why is None:
                if vec.shape != (dim,):
                    why = f"dimension {vec.shape[0] if vec.ndim == 1 else vec.shape} != {dim}"
                elif not np.isfinite(vec).all():
                    why = "NaN or inf"
        if why:
            dropped.append({"request_id": rec.get("request_id"), "kind": rec.get("kind"), "why": why})
        else:
            rows.append(vec)
            keep.append(i)
    return (np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)), keep, dropped


def feedback_quality(window: Window, cfg: MonitorConfig, reference: dict) -> dict:
    labelled = window.labelled
    n = len(labelled)
    ranks = np.asarray([chosen_rank(r) for r in labelled], dtype=float)
    out = {"n": n, "judged": n >= cfg.min_feedback,
           "reference": (reference.get("validation") or {}).get(f"R@{cfg.recall_k}")}
    if n:
        hits = int((ranks <= cfg.recall_k).sum())
        out.update(recall=hits / n, upper=wilson_upper(hits, n, cfg.confidence),
                   mrr=float(np.where(np.isfinite(ranks), 1.0 / ranks, 0.0).mean()),
                   reference_mrr=(reference.get("validation") or {}).get("MRR"))
    return out


def signals(window: Window, reference: dict, arrays: dict, cfg: MonitorConfig, probe: dict | None = None):
    """Every signal of the window, and the Evidently snapshots (text, image) that produced the drift ones."""
    dim = int(reference["dim"])
    searches, images = window.of_kind("search"), window.of_kind("image")
    text_emb, text_keep, text_dropped = valid_embeddings(searches, dim)
    image_emb, _, image_dropped = valid_embeddings(images, dim)
    total = len(searches) + len(images)
    dropped = text_dropped + image_dropped
    out: dict = {"invalid": {"count": len(dropped), "total": total,
                             "fraction": len(dropped) / total if total else 0.0, "examples": dropped[:10]},
                 "embedding_drift": {}, "top1_drift": {"judged": False, "n": 0}}
    snapshots = {}
    scores = np.asarray([searches[i].get("top1_score") for i in text_keep], dtype=object)
    has_score = np.asarray([s is not None and math.isfinite(float(s)) for s in scores], dtype=bool)
    if len(text_emb) >= cfg.min_requests:
        use_scores = has_score.sum() >= cfg.min_requests
        cur_scores = scores[has_score].astype(np.float64) if use_scores else None
        from cafe.monitoring.drift import run_report

        snap, res = run_report("text", arrays["text_embeddings"], text_emb, cfg,
                               arrays["top1_scores"].astype(np.float64) if use_scores else None, cur_scores)
        snapshots["text"] = snap
        out["embedding_drift"]["text"] = res["embedding"]
        if "top1" in res:
            out["top1_drift"] = res["top1"]
        else:
            out["top1_drift"] = {"judged": False, "n": int(has_score.sum())}
    else:
        out["embedding_drift"]["text"] = {"judged": False, "n": len(text_emb)}
        out["top1_drift"] = {"judged": False, "n": int(has_score.sum())}
    if len(image_emb) >= cfg.min_requests:
        from cafe.monitoring.drift import run_report

        snap, res = run_report("image", arrays["image_embeddings"], image_emb, cfg)
        snapshots["image"] = snap
        out["embedding_drift"]["image"] = res["embedding"]
    else:
        out["embedding_drift"]["image"] = {"judged": False, "n": len(image_emb)}
    gap = None
    if len(text_emb) and len(image_emb):
        gap = float(np.linalg.norm(image_emb.mean(0) - text_emb.mean(0)))
    ref_gap = reference.get("modality_gap")
    judged_gap = gap is not None and min(len(text_emb), len(image_emb)) >= cfg.min_requests
    out["modality_gap"] = {"value": gap, "reference": ref_gap,
                           "change": gap - ref_gap if judged_gap and ref_gap is not None else None}
    out["feedback"] = feedback_quality(window, cfg, reference)
    if probe is not None:
        ref_probe = (reference.get("probe") or {}).get(f"R@{cfg.recall_k}")
        now = probe.get(f"R@{cfg.recall_k}")
        out["probe"] = {"recall": now, "mrr": probe.get("MRR"), "reference": ref_probe,
                        "drop": ref_probe - now if ref_probe is not None and now is not None else None}
    return out, snapshots


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(type(value))


def monitor(window: Window, reference: dict, arrays: dict, cfg: MonitorConfig, out: ObjectStore | str,
            probe: dict | None = None, model_version: str | None = None, now: datetime | None = None) -> dict:
    """Judge the window, write ``summary.json`` (+ ``report.html`` / ``report_images.html`` and the page a person
    reads, ``decision.html``, linking them) under ``out`` and a point of the modality-gap history; returns the
    summary."""
    store = out if isinstance(out, ObjectStore) else open_store(out)
    now = now or datetime.now(timezone.utc)
    sig, snapshots = signals(window, reference, arrays, cfg, probe)
    verdict = decide(sig, cfg)
    versions = sorted({str(r.get("model_version")) for r in window.records})
    summary = {"decision": verdict["decision"], "reasons": verdict["reasons"], "not_judged": verdict["not_judged"],
               "at": now.isoformat(timespec="seconds"), "model_version": model_version, "served_versions": versions,
               "window": {"start": window.start, "end": window.end, "records": len(window.records),
                          "searches": len(window.of_kind("search")), "images": len(window.of_kind("image")),
                          "feedback": len(window.labelled), "unreadable": window.unreadable[:10]},
               "signals": sig, "thresholds": cfg.model_dump(mode="json")}
    if sig["modality_gap"]["value"] is not None:
        store.put_bytes(join("history", f"{now:%Y%m%dT%H%M%S%fZ}.json"),
                        json.dumps({"at": summary["at"], "modality_gap": sig["modality_gap"]["value"],
                                    "decision": summary["decision"]}).encode())
    summary["modality_gap_history"] = [json.loads(store.get_bytes(k)) for k in store.list("history/")][-50:]
    if cfg.report:
        reports = {}
        for name, snap in snapshots.items():
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "report.html"
                snap.save_html(str(path))
                key = "report.html" if name == "text" else f"report_{name}s.html"
                store.put_file(key, path)
                reports[name] = key
        summary["reports"] = reports
        summary["page"] = "decision.html"
        store.put_bytes("decision.html", decision_page(summary).encode())
    store.put_bytes("summary.json", json.dumps(summary, indent=1, default=_json_default).encode())
    return summary
