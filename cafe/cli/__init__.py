"""`cafe`: one subcommand per stage. Config comes from params.yaml plus ``-s section.key=value`` overrides;
inputs and outputs are paths or store URIs. DVC stages, KFP components and people reach the same stage
functions (`cafe/stages/`); each module here is a thin command over one group of them."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from cafe import __version__
from cafe.cli import data, demo, evaluation, mining, pipeline, registry, serving, training

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _version(value: bool) -> None:
    if value:
        print(f"cafe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                 help="print the version and exit")) -> None:
    pass


for command in (data.synth, data.repurpose, training.pretrain, training.train, evaluation.evaluate,
                evaluation.compare, evaluation.gate, evaluation.report, registry.register, serving.serve,
                serving.index, demo.demo, training.launch, training.merge, mining.mine):
    app.command()(command)
app.command("delete-job")(training.delete_job)
app.add_typer(registry.registry_app, name="registry")
app.add_typer(pipeline.pipeline_app, name="pipeline")
app.add_typer(serving.monitor_app, name="monitor")
app.add_typer(evaluation.prompts_app, name="prompts")


def main() -> None:  # pragma: no cover
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
