"""`cafe serve`, `cafe index` and `cafe monitor [reference|window]`: serving, gallery index and drift monitor.

The model is a directory (``--model``) or the registry version ``serve.ref`` / ``monitor.ref`` (an alias such as
production) pulled into a local cache; stores are ``open_store`` URIs from params.yaml's ``serve:`` / ``monitor:``.
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

monitor_app = typer.Typer(add_completion=False, help="Drift monitor: a traffic window against the served "
                          "version's reference -> summary.json (ok / warn / retrain) + Evidently HTML.")
console = Console(stderr=True)
out = Console()

ParamsOpt = typer.Option("params.yaml", "--params", "-p", help="params file (missing: defaults)")
SetOpt = typer.Option(None, "--set", "-s", help="override, e.g. -s monitor.window_hours=6 (repeatable)")
ModelOpt = typer.Option(None, "--model", "-m", help="model directory (default: the registry's serve.ref / monitor.ref)")


def _load(model: Optional[str], params: str, overrides: Optional[list[str]]):
    from cafe.cli import _params, _quiet_libraries
    from cafe.models import load_adapter
    from cafe.serving.server import resolve_model

    _quiet_libraries()
    p = _params(params, overrides)
    path, version = resolve_model(model, p)
    return p, load_adapter(path, p.prompts, p.model, fresh_tuning=False), version


def serve(model: Optional[str] = ModelOpt, host: Optional[str] = typer.Option(None, help="default: serve.host"),
          port: Optional[int] = typer.Option(None, help="default: serve.port"),
          params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """The model behind KServe's V1/V2 endpoints (<name> for embeddings + search, <name>-generate), POST
    /v1/feedback and the OpenAI-compatible /v1/embeddings, /v1/chat/completions, /v1/models; every answer goes to
    the traffic log with the model version."""
    from cafe.cli import _params, _quiet_libraries
    from cafe.serving.server import open_service, run

    _quiet_libraries()
    p = _params(params, set)
    service = open_service(p, model, log=console.print)
    console.print(f"serving {service.version} as {p.serve.model_name} on {host or p.serve.host}:{port or p.serve.port}; "
                  f"traffic -> {service.traffic.store.uri}")
    run(service, host or p.serve.host, port or p.serve.port)


def index(model: Optional[str] = ModelOpt, params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """(Re)compute the gallery embeddings of the served version (after a promotion to production marked them
    stale) into serve.index_store."""
    from cafe.contract import contract_of
    from cafe.registry import Registry
    from cafe.serving.index import build_index, gallery_items, index_key, reindex_status, weights_digest
    from cafe.serving.server import resolve_model

    p, adapter, version = _load(model, params, set)
    items = gallery_items(p.serve.gallery)
    key = index_key(weights_digest(resolve_model(model, p)[0]))
    built = build_index(adapter, items, p.serve.index_store, key, p.serve.batch_size, label=version,
                        contract=contract_of(adapter))
    out.print(f"gallery index {version} ({key}): {len(built.ids)} images -> {p.serve.index_store}")
    if not model:
        status = reindex_status(Registry(p.registry.store), p.registry.name, p.serve.ref, p.serve.index_store, items)
        out.print(f"reindex status of {p.serve.ref}: {json.dumps(status)}")


@monitor_app.callback(invoke_without_command=True)
def monitor(ctx: typer.Context, model: Optional[str] = ModelOpt,
            reference: Optional[str] = typer.Option(None, "--reference", help="reference folder (default: the one "
                                                    "registered with monitor.ref)"),
            probe: bool = typer.Option(True, "--probe/--no-probe", help="re-embed the probe set with the model"),
            out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="default: monitor.out"),
            pairs_out: Optional[str] = typer.Option(None, "--pairs-out", help="on retrain: write the window's "
                                                    "feedback pairs here (an instruction folder)"),
            params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Judge the current traffic window: summary.json with decision ok / warn / retrain + Evidently HTML."""
    if ctx.invoked_subcommand is not None:
        return
    from cafe.cli import _params
    from cafe.monitoring.run import run_monitor

    summary, counts = run_monitor(_params(params, set), model, reference, out_dir, pairs_out, probe)
    print_summary(summary)
    if counts is not None:
        console.print(f"window pairs -> {pairs_out}: {counts}")


def print_summary(summary: dict) -> None:
    colour = {"ok": "green", "warn": "yellow", "retrain": "red"}[summary["decision"]]
    table = Table(title=f"monitor: [{colour}]{summary['decision']}[/{colour}]  ({summary['window']['records']} records, "
                  f"{summary['window']['feedback']} with feedback)")
    table.add_column("signal")
    table.add_column("value")
    sig = summary["signals"]
    for name, drift in sig["embedding_drift"].items():
        table.add_row(f"{name} drift", f"{drift['score']:.3f} (> {drift['threshold']:.3f}: {drift['drifted']})"
                      if drift.get("judged") else f"not judged (n={drift['n']})")
    top1 = sig["top1_drift"]
    table.add_row("top-1 similarity K-S p", f"{top1['p_value']:.3g}" if top1.get("judged") else f"not judged (n={top1['n']})")
    fb = sig["feedback"]
    table.add_row("feedback R@K / MRR", f"{fb['recall']:.3f} / {fb['mrr']:.3f} (ref {fb['reference']}, n={fb['n']})"
                  if fb.get("n") else "no feedback")
    if sig.get("probe"):
        table.add_row("probe R@K", f"{sig['probe']['recall']:.3f} (ref {sig['probe']['reference']})")
    gap = sig["modality_gap"]
    table.add_row("modality gap", "-" if gap["value"] is None else f"{gap['value']:.3f} (ref {gap['reference']:.3f})")
    table.add_row("NaN / missing embeddings", f"{sig['invalid']['count']} of {sig['invalid']['total']}")
    for reason in summary["reasons"]:
        table.add_row("reason", reason)
    for note in summary["not_judged"]:
        table.add_row("not judged", note)
    out.print(table)


@monitor_app.command("reference")
def reference_cmd(model: str = typer.Option(..., "--model", "-m", help="model directory"),
                  out_dir: str = typer.Option(..., "--out", "-o", help="folder for reference.json + reference.npz"),
                  params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Build the monitor reference of a model (validation embeddings, top-1 similarity statistics, probe
    metrics); `cafe register --reference DIR` stores it with the version."""
    from cafe.monitoring.reference import build_reference, save_reference

    p, adapter, _ = _load(model, params, set)
    meta, arrays = build_reference(adapter, p.monitor, p.serve.top_k, p.serve.batch_size)
    save_reference(meta, arrays, out_dir)
    out.print_json(json.dumps({k: meta[k] for k in ("validation", "probe", "modality_gap", "top1_score")}))


@monitor_app.command("window")
def window_cmd(out_path: str = typer.Option(..., "--out", "-o", help="instruction folder (instructions.json + images/)"),
               params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """The current window's feedback-labelled searches as training pairs (chosen image, query text)."""
    from cafe.cli import _params
    from cafe.monitoring.run import write_window_pairs
    from cafe.serving.traffic import TrafficLog

    p = _params(params, set)
    window = TrafficLog(p.monitor.traffic_store).read_window(p.monitor.window_hours, p.monitor.window_max_requests)
    console.print(f"window pairs -> {out_path}: {write_window_pairs(window, p, out_path)}")
