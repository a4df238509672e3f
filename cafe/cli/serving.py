"""`cafe serve`, `cafe index` and `cafe monitor [reference|window]`: serving, gallery index and drift monitor.

The model is a directory (``--model``) or the registry version ``serve.ref`` / ``monitor.ref`` (an alias such as
production) pulled into a local cache; stores are ``open_store`` URIs from params.yaml's ``serve:`` / ``monitor:``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from cafe.cli.options import (ModelOpt, ParamsOpt, SetOpt, console, model_path, out, params as load, quiet_libraries,
                              registry_errors)

monitor_app = typer.Typer(add_completion=False, help="Drift monitor: a traffic window against the served "
                          "version's reference -> summary.json (ok / warn / retrain) + Evidently HTML.")


def serve(model: Optional[str] = ModelOpt, host: Optional[str] = typer.Option(None, help="default: serve.host"),
          port: Optional[int] = typer.Option(None, help="default: serve.port"),
          params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """The model behind KServe's V1/V2 endpoints (<name> for embeddings + search, <name>-generate), POST
    /v1/feedback and the OpenAI-compatible /v1/embeddings, /v1/chat/completions, /v1/models; every answer goes
    to the traffic log with the model version."""
    from cafe.stages.serve import serve as run, service

    quiet_libraries()
    p = load(params, set)
    with registry_errors(f"serve.ref {p.serve.ref} of {p.registry.name} in {p.registry.store}"):
        svc = service(p, model and model_path(model), log=console.print)
    run(p, svc, host, port, log=console.print)


def index(model: Optional[str] = ModelOpt, params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """(Re)compute the gallery embeddings of the served version (after a promotion to production marked them
    stale) into serve.index_store."""
    from cafe.stages.index import index as run

    quiet_libraries()
    p = load(params, set)
    with registry_errors(f"serve.ref {p.serve.ref} of {p.registry.name} in {p.registry.store}"):
        built = run(p, model and model_path(model))
    out.print(f"gallery index {built['version']}: {built['images']} images -> {p.serve.index_store}")
    if built["status"] is not None:
        out.print(f"reindex status of {p.serve.ref}: {json.dumps(built['status'])}")


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
    from cafe.report import print_monitor_summary
    from cafe.stages.monitor import monitor as run

    quiet_libraries()
    p = load(params, set)
    with registry_errors(f"monitor.ref {p.monitor.ref} of {p.registry.name} in {p.registry.store}"):
        summary, counts = run(p, model and model_path(model), reference, out_dir, pairs_out, probe)
    print_monitor_summary(summary, out)
    if summary.get("page"):
        console.print(f"decision page -> {Path(out_dir or p.monitor.out) / summary['page']}")
    if counts is not None:
        console.print(f"window pairs -> {pairs_out}: {counts}")


@monitor_app.command("reference")
def reference_cmd(model: str = typer.Option(..., "--model", "-m", help="model directory"),
                  out_dir: str = typer.Option(..., "--out", "-o", help="folder for reference.json + reference.npz"),
                  params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Build the monitor reference of a model (validation embeddings, top-1 similarity statistics, probe
    metrics); `cafe register` builds and stores it itself, or takes this folder with --reference DIR."""
    from cafe.stages.reference import reference as run

    quiet_libraries()
    meta = run(load(params, set), model_path(model), out_dir)
    out.print_json(json.dumps({k: meta[k] for k in ("validation", "probe", "modality_gap", "top1_score")}))


@monitor_app.command("window")
def window_cmd(out_path: str = typer.Option(..., "--out", "-o", help="instruction folder (instructions.json + images/)"),
               params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """The current window's feedback-labelled searches as training pairs (chosen image, query text)."""
    from cafe.stages.monitor import window_pairs

    console.print(f"window pairs -> {out_path}: {window_pairs(load(params, set), out_path)}")
