"""`cafe`: one subcommand per stage. Config comes from params.yaml plus ``-s section.key=value`` overrides;
inputs and outputs are paths. DVC stages, KFP components and people all call these same commands."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cafe.config import ConfigError, Params, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)

ParamsOpt = typer.Option("params.yaml", "--params", "-p", help="params file (missing: defaults)")
SetOpt = typer.Option(None, "--set", "-s", help="override, e.g. -s train.max_steps=100 (repeatable)")


def _params(path: str, overrides: Optional[list[str]]) -> Params:
    try:
        return load_params(path, overrides)
    except ConfigError as err:
        console.print(f"[red]config error[/red]: {err}")
        raise typer.Exit(2) from None


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@app.command()
def synth(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Generate the shapes world: instruction data and held-out evaluation sets."""
    from cafe.data import shapes

    p = _params(params, set)
    start = time.perf_counter()
    counts = shapes.generate(p.synth)
    console.print(f"shapes world -> {p.synth.out} in {time.perf_counter() - start:.1f}s: {counts}")


@app.command()
def repurpose(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Instruction data (a mixture of JSON/JSONL/Parquet sources) -> Parquet shards of (image, short
    caption, long caption), stats.json, quarantine.jsonl and data_version.json. Exit 1 when the quarantine
    share is above repurpose.max_quarantine_share or the input cannot be read."""
    from cafe.data.repurpose import RepurposeError, print_summary, repurpose as run

    p = _params(params, set)
    try:
        stats = run(p.repurpose)
    except RepurposeError as err:
        console.print(f"[red]repurpose failed[/red]: {err}")
        raise typer.Exit(1) from None
    print_summary(stats, p.repurpose.out, console)


@app.command()
def pretrain(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt,
             resume: bool = typer.Option(True, help="continue from the newest complete checkpoint")) -> None:
    """Train the tiny base model language-only (the embedded stand-in for a pretrained LVLM)."""
    from cafe.distributed import cleanup, init_distributed
    from cafe.training.pretrain import pretrain as run

    _quiet_libraries()
    p = _params(params, set)
    out = run(p, init_distributed(p.train.backend), resume=resume)
    console.print(f"base model -> {out}")
    cleanup()


@app.command()
def train(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt,
          resume: bool = typer.Option(True, help="continue from the newest complete checkpoint")) -> None:
    """CAFe fine-tuning: alpha_lm * L_lm + alpha_con * L_con. Runs alone or under torchrun."""
    from cafe.data.pairs import pairs_dataset
    from cafe.distributed import cleanup, init_distributed
    from cafe.training.trainer import Trainer

    _quiet_libraries()
    p = _params(params, set)
    dist = init_distributed(p.train.backend)
    out = Trainer(p.train, p, dist).fit(pairs_dataset(p), p.train.base_model, resume=resume)
    if dist.is_main:
        console.print(f"fine-tuned model -> {out}")
    cleanup()


def _named_dirs(items: Optional[list[str]]) -> dict[str, str]:
    """``["base=metrics/base", "metrics/other"]`` -> ``{"base": "metrics/base", "other": "metrics/other"}``."""
    out = {}
    for item in items or []:
        name, _, path = item.partition("=")
        out[name if path else Path(name).name] = path or name
    return out


@app.command()
def evaluate(model: str = typer.Option(..., "--model", "-m", help="checkpoint directory or hub id"),
             out: str = typer.Option(..., "--out", "-o", help="directory for metrics.json"),
             compare: Optional[list[str]] = typer.Option(
                 None, "--compare", "-c", help="NAME=DIR of another evaluation for the report (repeatable; base first)"),
             params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """The evaluation suite (retrieval, captions, POPE, THRONE, SugarCrepe, MMStar, embedding geometry)
    -> metrics.json, per_item.npz, report.md/html."""
    from cafe.evaluation.evaluate import evaluate as run
    from cafe.models import load_adapter

    _quiet_libraries()
    p = _params(params, set)
    metrics = run(load_adapter(model, p.prompts, p.model), p.evaluate, p.prompts, out, model_path=model,
                  compare=_named_dirs(compare))
    console.print_json(json.dumps(metrics))


@app.command()
def compare(metrics: list[str] = typer.Argument(..., help="NAME=path/to/metrics.json, first is the reference")) -> None:
    """Print metrics files side by side."""
    from cafe.report import load_metrics, print_table

    runs = {}
    for item in metrics:
        name, _, path = item.partition("=")
        runs[name if path else Path(name).parent.name] = load_metrics(path or name)
    print_table(runs, "comparison", Console())


@app.command()
def demo(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """The main job on the embedded default: synth -> repurpose -> pretrain (cached) -> CAFe -> evaluate,
    then the before/after table."""
    from cafe.demo import run

    _quiet_libraries()
    p = _params(params, set)
    ok = run(p, Console())
    raise typer.Exit(0 if ok else 1)


@app.command()
def launch(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt,
           out: Optional[str] = typer.Option(None, "--out", "-o", help="write the manifest here (default: stdout)"),
           submit: bool = typer.Option(False, "--submit", help="create the job on the cluster (kubeconfig or "
                                       "in-cluster service account) instead of printing it"),
           follow: bool = typer.Option(True, "--follow/--no-follow", help="with --submit: wait for the end")) -> None:
    """The training job for a Kubernetes cluster: a Kubeflow PyTorchJob (or Trainer v2 TrainJob with
    -s launch.kind=trainjob) running `torchrun -m cafe.cli train` with this config in the image."""
    from cafe.cluster.jobs import LaunchError
    from cafe.cluster.launch import submit_and_follow, summary, warn, write_manifest

    p = _params(params, set)
    warn(p, console)
    try:
        if submit:
            console.print(summary(p, set or []))
            raise typer.Exit(0 if submit_and_follow(p, params, set or [], follow, console) else 1)
        text = write_manifest(p, params, set or [], out)
    except LaunchError as err:
        console.print(f"[red]launch error[/red]: {err}")
        raise typer.Exit(2) from None
    if out:
        console.print(summary(p, set or []))
        console.print(f"{p.launch.kind} -> {out}")
    else:
        sys.stdout.write(text)


@app.command("delete-job")
def delete_job(name: str = typer.Argument(..., help="the job's name (launch.name)"),
               kind: str = typer.Option("pytorchjob", help="pytorchjob | trainjob"),
               namespace: str = typer.Option("cafe", "--namespace", "-n")) -> None:
    """Delete a training job and its pods; succeeds if it is already gone (for pipeline exit handlers)."""
    from cafe.cluster.jobs import LaunchError
    from cafe.cluster.submit import delete_job as run

    try:
        gone = run(name, kind=kind, namespace=namespace)
    except LaunchError as err:
        console.print(f"[red]launch error[/red]: {err}")
        raise typer.Exit(2) from None
    console.print(f"{kind} {namespace}/{name}: {'deleted' if gone else 'already gone'}")


@app.command()
def merge(model: str = typer.Option(..., "--model", "-m", help="LoRA checkpoint directory (cafe train with model.lora)"),
          out: str = typer.Option(..., "--out", "-o", help="directory for the full checkpoint"),
          params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Fold a LoRA checkpoint's adapters into its base weights: a full checkpoint for serving."""
    from cafe.models import merge as run

    _quiet_libraries()
    p = _params(params, set)
    console.print(f"merged full checkpoint -> {run(model, out, p.prompts, p.model)}")


from cafe.registry_cli import register, registry_app  # noqa: E402

app.command()(register)
app.add_typer(registry_app, name="registry")

from cafe.pipeline_cli import pipeline_app  # noqa: E402

app.add_typer(pipeline_app, name="pipeline")

from cafe.monitor_cli import index, monitor_app, serve  # noqa: E402

app.command()(serve)
app.command()(index)
app.add_typer(monitor_app, name="monitor")


@app.command()
def gate(metrics: str = typer.Option(..., "--metrics", help="the model's metrics.json (per_item.npz beside it is used)"),
         reference: Optional[str] = typer.Option(None, "--reference", help="the base model's metrics.json: the "
                                                 "reference while the registry has no production model"),
         production: bool = typer.Option(True, help="compare with the registry's gate.reference_alias version "
                                                    "when there is one"),
         out: str = typer.Option(..., "--out", help="directory for gate.json"),
         params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Floors and allowed regressions with bootstrap intervals -> gate.json; exit 1 when a check fails."""
    from cafe.evaluation.gate import load_evaluation, print_gate, production_reference, run_gate, write_gate

    p = _params(params, set)
    try:
        found = (production_reference(p.registry.store, p.registry.name, p.gate.reference_alias,
                                      Path(out) / "reference") if production and p.gate.reference_alias else None)
        ref_path, ref_label = found or (reference, reference and f"file {reference}")
        values, per_item = load_evaluation(metrics)
        ref_values, ref_items = load_evaluation(ref_path) if ref_path else (None, None)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]gate[/red]: {err}")
        raise typer.Exit(2) from None
    result = run_gate(values, ref_values, p.gate, per_item=per_item, reference_per_item=ref_items)
    result["reference"] = ref_label
    path = write_gate(result, out)
    print_gate(result, Console())
    console.print(f"gate {'passed' if result['passed'] else 'FAILED'} against {ref_label or 'no reference'} -> {path}")
    raise typer.Exit(0 if result["passed"] else 1)


@app.command()
def report(runs: list[str] = typer.Argument(..., help="NAME=DIR evaluation folders; the base first, the model last"),
           out: str = typer.Option(..., "--out", "-o", help="directory for report.md and report.html"),
           title: Optional[str] = typer.Option(None, help="report title")) -> None:
    """Markdown + self-contained HTML report comparing evaluations."""
    from cafe.evaluation.report import write_report

    md, page = write_report(_named_dirs(runs), out, title)
    console.print(f"report -> {md}, {page}")


prompts_app = typer.Typer(no_args_is_help=True, help="Embedding prompts.")
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("rank")
def prompts_rank(model: str = typer.Option(..., "--model", "-m", help="checkpoint directory or hub id"),
                 out: Optional[str] = typer.Option(None, "--out", "-o", help="write the ranking as JSON here"),
                 params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Rank evaluate.prompt_candidates by next-token entropy and small-set retrieval."""
    from rich.table import Table

    from cafe.evaluation.prompts import rank_prompts
    from cafe.models import load_adapter

    _quiet_libraries()
    p = _params(params, set)
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
    Console().print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows, indent=1))


def main() -> None:  # pragma: no cover
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
