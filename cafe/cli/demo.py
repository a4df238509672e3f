"""`cafe demo`: the main job (cafe/demo.py)."""

from __future__ import annotations

import typer

from cafe.cli.options import out, quiet_libraries


def demo(requests: int = typer.Option(120, help="labelled searches in the generated traffic window")) -> None:
    """The training pipeline (`dvc repro`: synth -> repurpose -> cached base -> CAFe -> evaluations -> gate ->
    register), then on a pass: promotion, a serving smoke test and one monitoring pass. Exit 1 when the gate
    fails. Runs in a DVC workspace (the checkout) on its params.yaml."""
    from cafe.demo import run

    quiet_libraries()
    raise typer.Exit(run(out, traffic_requests=requests))
