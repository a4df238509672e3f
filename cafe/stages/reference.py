"""Stage `reference`: the monitor reference of a model (validation embeddings, top-1 similarity statistics,
probe metrics), which the register stage stores with every version so that `cafe monitor` can watch it."""

from __future__ import annotations

from pathlib import Path

from cafe.config import Params
from cafe.models import load_adapter
from cafe.monitoring.reference import build_reference, save_reference
from cafe.storage import localize


def reference(p: Params, model: str | Path, out: str | Path, data: str | None = None) -> dict:
    """Build the reference of ``model`` into ``out`` (reference.json + reference.npz) from ``monitor.probe``, or
    from ``data``'s retrieval_karpathy.json (an evaluation folder or ``s3://`` URI, downloaded beside ``out``);
    returns its metadata."""
    cfg = p.monitor
    if data:
        folder = localize(data, Path(out).parent / "reference-data")
        cfg = cfg.model_copy(update={"probe": str(folder / Path(cfg.probe).name)})
    adapter = load_adapter(model, p.prompts, p.model, fresh_tuning=False)
    meta, arrays = build_reference(adapter, cfg, p.serve.top_k, p.serve.batch_size)
    save_reference(meta, arrays, out)
    return meta
