"""Stage `evaluate`: the evaluation suite (retrieval, captions, POPE, THRONE, SugarCrepe, MMStar, embedding
geometry) -> metrics.json, per_item.npz (what the gate bootstraps) and report.md/html."""

from __future__ import annotations

from pathlib import Path

from cafe.config import Params
from cafe.evaluation.evaluate import evaluate as run
from cafe.models import load_adapter
from cafe.storage import localize


def evaluate(p: Params, model: str | Path, out: str | Path, compare: dict[str, str | Path] | None = None,
             data: str | None = None, model_label: str | None = None) -> dict:
    """Evaluate the checkpoint ``model`` (a folder or hub id) on ``data`` (default ``evaluate.data``; a folder or
    ``s3://`` URI, downloaded beside ``out``) into ``out``, comparing with the evaluation folders in
    ``compare`` (name -> folder, the base first) in the report; returns the metrics."""
    cfg = p.evaluate
    if data:
        cfg = cfg.model_copy(update={"data": str(localize(data, Path(out).parent / "eval-data"))})
    adapter = load_adapter(model, p.prompts, p.model, fresh_tuning=False)
    return run(adapter, cfg, p.prompts, out, model_path=model_label or str(model), compare=compare or {})
