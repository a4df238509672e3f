"""One monitor run from the config: reference (registered with ``monitor.ref``, or a folder), the probe set
re-embedded with the served model, the traffic window, the judgement; shared by `cafe monitor` and the
monitoring pipeline's step."""

from __future__ import annotations

from cafe.config import Params


def run_monitor(p: Params, model: str | None = None, reference: str | None = None, out: str | None = None,
                pairs_out: str | None = None, probe: bool = True) -> tuple[dict, dict | None]:
    """``(summary, window pair counts or None)``; with ``pairs_out`` the window's feedback pairs are written
there as an instruction folder."""
    from cafe.monitoring.monitor import monitor
    from cafe.monitoring.reference import fetch_reference, load_reference, probe_metrics
    from cafe.registry import Registry
    from cafe.serving.traffic import TrafficLog

    version = None
    if reference:
        ref_meta, arrays = load_reference(reference)
    else:
        ref_meta, arrays, record = fetch_reference(Registry(p.registry.store), p.registry.name, p.monitor.ref)
        version = f"{p.registry.name}-v{record['version']}"
    probe_result = None
    if probe and p.monitor.probe_images:
        from cafe.models import load_adapter
        from cafe.serving.server import resolve_model

        p = p.model_copy(deep=True)
        p.serve.ref = p.monitor.ref
        path, version = resolve_model(model, p)
        adapter = load_adapter(path, p.prompts, p.model, fresh_tuning=False)
        probe_result = probe_metrics(adapter, p.monitor, ref_meta["top_k"], p.serve.batch_size)
    window = TrafficLog(p.monitor.traffic_store).read_window(p.monitor.window_hours, p.monitor.window_max_requests)
    summary = monitor(window, ref_meta, arrays, p.monitor, out or p.monitor.out, probe=probe_result,
                      model_version=version)
    counts = write_window_pairs(window, p, pairs_out) if pairs_out else None
    return summary, counts


def write_window_pairs(window, p: Params, pairs_out: str) -> dict:
    """The window's feedback pairs -> the instruction folder ``pairs_out`` (caption prompt of ``p``); counts."""
    from cafe.data.pair_folder import write_pair_folder
    from cafe.monitoring.window_data import window_pairs
    from cafe.serving.index import gallery_items

    pairs, counts = window_pairs(window, dict(gallery_items(p.serve.gallery)))
    counts["pairs"] = write_pair_folder(pairs, pairs_out, p.prompts.caption)
    return counts
