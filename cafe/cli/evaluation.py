"""`cafe evaluate | compare | gate | report | prompts rank`: measuring a model and judging it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cafe.cli.options import (ParamsOpt, SetOpt, console, failures, named_dirs, out as stdout, params as load,
                              quiet_libraries)


def evaluate(model: str = typer.Option(..., "--model", "-m", help="checkpoint directory or hub id"),
             out: str = typer.Option(..., "--out", "-o", help="directory for metrics.json"),
             compare: Optional[list[str]] = typer.Option(
                 None, "--compare", "-c", help="NAME=DIR of another evaluation for the report (repeatable; base first)"),
             params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """The evaluation suite (retrieval, captions, POPE, THRONE, SugarCrepe, MMStar, embedding geometry)
    -> metrics.json, per_item.npz, report.md/html."""
    from cafe.stages.evaluate import evaluate as run

    quiet_libraries()
    metrics = run(load(params, set), model, out, compare=named_dirs(compare))
    stdout.print_json(json.dumps(metrics))


def compare(metrics: list[str] = typer.Argument(..., help="NAME=path/to/metrics.json, first is the reference")) -> None:
    """Print metrics files side by side."""
    from cafe.report import load_metrics, print_table

    runs = {}
    for item in metrics:
        name, _, path = item.partition("=")
        runs[name if path else Path(name).parent.name] = load_metrics(path or name)
    print_table(runs, "comparison", stdout)


def gate(metrics: str = typer.Option(..., "--metrics", help="the model's metrics.json (per_item.npz beside it is used)"),
         reference: Optional[str] = typer.Option(None, "--reference", help="the base model's metrics.json: the "
                                                 "reference while the registry has no production model"),
         production: bool = typer.Option(True, help="compare with the registry's gate.reference_alias version "
                                                    "when there is one"),
         out: str = typer.Option(..., "--out", help="directory for gate.json"),
         params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Floors and allowed regressions with bootstrap intervals -> gate.json; exit 1 when a check fails."""
    from cafe.evaluation.gate import print_gate
    from cafe.stages.gate import gate as run

    p = load(params, set)
    with failures(FileNotFoundError, ValueError, code=2, label="gate"):
        result = run(p, metrics, out, base=reference, production=production)
    print_gate(result, stdout)
    console.print(f"gate {'passed' if result['passed'] else 'FAILED'} against {result['reference'] or 'no reference'} "
                  f"-> {Path(out) / 'gate.json'}")
    raise typer.Exit(0 if result["passed"] else 1)


def report(runs: list[str] = typer.Argument(..., help="NAME=DIR evaluation folders; the base first, the model last"),
           out: str = typer.Option(..., "--out", "-o", help="directory for report.md and report.html"),
           title: Optional[str] = typer.Option(None, help="report title")) -> None:
    """Markdown + self-contained HTML report comparing evaluations."""
    from cafe.evaluation.report import write_report

    md, page = write_report(named_dirs(runs), out, title)
    console.print(f"report -> {md}, {page}")


prompts_app = typer.Typer(no_args_is_help=True, help="Embedding prompts.")


@prompts_app.command("rank")
def prompts_rank(model: str = typer.Option(..., "--model", "-m", help="checkpoint directory or hub id"),
                 out: Optional[str] = typer.Option(None, "--out", "-o", help="write the ranking as JSON here"),
                 params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Rank evaluate.prompt_candidates by next-token entropy and small-set retrieval."""
    from rich.table import Table

    from cafe.evaluation.prompts import rank_prompts
    from cafe.models import load_adapter

    quiet_libraries()
    p = load(params, set)
    adapter = load_adapter(model, p.prompts, p.model)
    rows = rank_prompts(adapter, [tuple(c) for c in p.evaluate.prompt_candidates],
                        Path(p.evaluate.data) / "retrieval_karpathy.json", p.evaluate.prompt_rank_images,
                        p.evaluate.batch_size)
    table = Table(title=f"embedding prompts ({p.evaluate.prompt_rank_images} images)")
    for col in ("rank", "image prompt", "text prompt", "R@1 i2t", "R@1 t2i", "entropy", "entropy rank"):
        table.add_column(col, justify="left" if "prompt" in col else "right")
    for r in rows:
        table.add_row(str(r["retrieval_rank"]), r["image_prompt"], r["text_prompt"], f"{r['i2t_R@1']:.3f}",
                      f"{r['t2i_R@1']:.3f}", f"{r['entropy']:.3f}", str(r["entropy_rank"]))
    stdout.print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows, indent=1))
