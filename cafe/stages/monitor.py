"""Stage `monitor`: the current traffic window against the served version's registered reference ->
summary.json with the decision ok / warn / retrain (+ Evidently HTML), and on request the window's
feedback pairs as an instruction folder (what the retrain stage trains on)."""

from __future__ import annotations

from cafe.config import Params
from cafe.monitoring.run import run_monitor


def monitor(p: Params, model: str | None = None, reference: str | None = None, out: str | None = None,
            pairs_out: str | None = None, probe: bool = True) -> tuple[dict, dict | None]:
    """Judge the window of ``monitor.traffic_store``: the reference is ``reference`` (a folder) or the one
    registered with ``monitor.ref``; the probe set is re-embedded with ``model`` (default: that version) when
    ``probe``. Writes into ``out`` (default ``monitor.out``); returns ``(summary, window pair counts or None)``."""
    return run_monitor(p, model, reference, out, pairs_out, probe)
