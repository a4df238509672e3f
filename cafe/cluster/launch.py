"""`cafe launch`: the training job's manifest as YAML, or submitted to the cluster and followed to the end."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from cafe.cluster.jobs import build_job, job_overrides, job_params, launch_warnings
from cafe.config import Params


def to_yaml(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=120)


def write_manifest(params: Params, params_file: str, overrides: Sequence[str], out: str | None) -> str:
    """Render the job of kind ``launch.kind``; write it to ``out`` (atomically) or return it for stdout."""
    text = to_yaml(build_job(params, params_file=params_file, overrides=overrides))
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return text


def summary(params: Params, overrides: Sequence[str]) -> Table:
    """What the job will run, as its ranks will see the config."""
    la = params.launch
    params = job_params(params, job_overrides(params, la, overrides))
    table = Table(title=f"{la.kind} {la.namespace}/{la.name}", show_header=False)
    world = la.nodes * la.procs_per_node
    shape = (f"elastic {la.elastic.min_nodes}..{la.elastic.max_nodes} nodes (start {la.nodes})"
             if la.elastic.enabled else f"{la.nodes} nodes")
    for key, value in [("image", la.image), ("shape", f"{shape} x {la.procs_per_node} processes = {world}"),
                       ("batch", f"{params.train.batch_size} per process, global {params.train.batch_size * world}"),
                       ("strategy", params.train.strategy + (f" ({params.train.deepspeed_config})"
                                                             if params.train.strategy == "deepspeed" else "")),
                       ("base model", params.train.base_model), ("data", params.train.data),
                       ("overrides", " ".join(overrides) or "-")]:
        table.add_row(key, str(value))
    return table


def submit_and_follow(params: Params, params_file: str, overrides: Sequence[str], follow: bool,
                      console: Console) -> bool:
    """Create the job; if ``follow``, poll it to the end. True when it was created (and, followed, succeeded)."""
    from cafe.cluster.submit import JobFailed, client_configuration, follow as follow_job, submit

    la = params.launch
    cfg = client_configuration(la.kubeconfig, la.context)
    job = submit(params, params_file=params_file, overrides=overrides, cfg=cfg)
    console.print(f"created {job.kind} {job.namespace}/{job.name}")
    if not follow:
        return True
    start = time.monotonic()

    def report(condition: str, message: str) -> None:
        console.print(f"[{time.monotonic() - start:7.0f}s] {condition}: {message}")

    with console.status(f"following {job.kind} {job.namespace}/{job.name}"):
        try:
            final = follow_job(job, cfg, poll_seconds=la.poll_seconds, timeout_seconds=la.timeout_seconds,
                               on_change=report)
        except (JobFailed, TimeoutError) as err:
            console.print(f"[red]{err}[/red]")
            return False
    console.print(f"{job.kind} {job.namespace}/{job.name} {final} after {time.monotonic() - start:.0f}s")
    return True


def warn(params: Params, console: Console) -> None:
    for message in launch_warnings(params):
        console.print(f"[yellow]warning[/yellow]: {message}")
