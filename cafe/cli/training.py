"""`cafe pretrain | train | merge | launch | delete-job`: the base model, CAFe fine-tuning, and the cluster job."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from cafe.cli.options import ParamsOpt, SetOpt, console, failures, params as load, quiet_libraries

ResumeOpt = typer.Option(True, help="continue from the newest complete checkpoint")


def pretrain(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt, resume: bool = ResumeOpt,
             force: bool = typer.Option(False, "--force", help="rebuild even when the cached base is current")) -> None:
    """Train the tiny base model language-only (the embedded stand-in for a pretrained LVLM); a base built with
    the same config is reused."""
    from cafe.distributed import cleanup
    from cafe.stages.pretrain import is_current, pretrain as run

    quiet_libraries()
    p = load(params, set)
    cached = is_current(p) and not force
    out = run(p, resume=resume, force=force)
    console.print(f"base model -> {out}" + (" (cached: its config is current)" if cached else ""))
    cleanup()


def train(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt, resume: bool = ResumeOpt) -> None:
    """CAFe fine-tuning: alpha_lm * L_lm + alpha_con * L_con. Runs alone or under torchrun."""
    from cafe.distributed import cleanup, init_distributed
    from cafe.stages.train import train as run

    quiet_libraries()
    p = load(params, set)
    dist = init_distributed(p.train.backend)
    out = run(p, resume=resume, dist=dist)
    if dist.is_main:
        console.print(f"fine-tuned model -> {out}")
    cleanup()


def merge(model: str = typer.Option(..., "--model", "-m", help="LoRA checkpoint directory (cafe train with model.lora)"),
          out: str = typer.Option(..., "--out", "-o", help="directory for the full checkpoint"),
          params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Fold a LoRA checkpoint's adapters into its base weights: a full checkpoint for serving."""
    from cafe.models import merge as run

    quiet_libraries()
    p = load(params, set)
    console.print(f"merged full checkpoint -> {run(model, out, p.prompts, p.model)}")


def launch(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt,
           out: Optional[str] = typer.Option(None, "--out", "-o", help="write the manifest here (default: stdout)"),
           submit: bool = typer.Option(False, "--submit", help="create the job on the cluster (kubeconfig or "
                                       "in-cluster service account) instead of printing it"),
           follow: bool = typer.Option(True, "--follow/--no-follow", help="with --submit: wait for the end")) -> None:
    """The training job for a Kubernetes cluster: a Kubeflow PyTorchJob (or Trainer v2 TrainJob with
    -s launch.kind=trainjob) running `torchrun -m cafe.cli train` with this config in the image."""
    from cafe.cluster.jobs import LaunchError
    from cafe.cluster.launch import submit_and_follow, summary, warn, write_manifest

    p = load(params, set)
    warn(p, console)
    with failures(LaunchError, code=2, label="launch error"):
        if submit:
            console.print(summary(p, set or []))
            raise typer.Exit(0 if submit_and_follow(p, params, set or [], follow, console) else 1)
        text = write_manifest(p, params, set or [], out)
    if out:
        console.print(summary(p, set or []))
        console.print(f"{p.launch.kind} -> {out}")
    else:
        sys.stdout.write(text)


def delete_job(name: str = typer.Argument(..., help="the job's name (launch.name)"),
               kind: str = typer.Option("pytorchjob", help="pytorchjob | trainjob"),
               namespace: str = typer.Option("cafe", "--namespace", "-n")) -> None:
    """Delete a training job and its pods; succeeds if it is already gone (for pipeline exit handlers)."""
    from cafe.cluster.jobs import LaunchError
    from cafe.cluster.submit import delete_job as run

    with failures(LaunchError, code=2, label="launch error"):
        gone = run(name, kind=kind, namespace=namespace)
    console.print(f"{kind} {namespace}/{name}: {'deleted' if gone else 'already gone'}")
