"""`cafe pipeline compile | run --local | submit`: the Kubeflow training pipeline (pipelines/training.py).

The steps' image is fixed when compiling (``--image``, default ``launch.image``) and is also the run
parameter ``image`` the PyTorchJob runs; parameter defaults come from the params file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

from cafe.cli.options import SetOpt as _SetOpt, console, fail, params as load

pipeline_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="Kubeflow pipeline: compile the YAML to upload, run it locally, submit it.")
ParamsOpt = typer.Option("params.yaml", "--params", "-p", help="params file: the parameters' defaults, and the "
                                                             "file the steps read (a path inside the image)")
SetOpt = _SetOpt
ImageOpt = typer.Option(None, "--image", help="image every step runs, e.g. ghcr.io/org/cafe:TAG (default: launch.image)")
ArgOpt = typer.Option(None, "--arg", "-a", help="pipeline parameter NAME=VALUE (value as YAML; repeatable)")
PipelineOpt = typer.Option("training", "--pipeline", help="which pipelines/<name>.py (each has build(image, params, "
                                                          "params_file))")


def project_root(name: str) -> Path:
    """The folder holding components/ and pipelines/<name>.py: the current one, the checkout this code runs
    from (or the image's /workspace), else the copy an installed wheel carries (cafe/project/, setup.py)."""
    here = Path(__file__).resolve()
    for candidate in (Path.cwd(), here.parents[2], here.parents[1] / "project"):
        if (candidate / "pipelines" / f"{name}.py").is_file():
            return candidate
    fail(f"no pipelines/{name}.py here, in the checkout or in the installed package; run from the project root")


def build_pipeline(params_file: str, overrides: Optional[list[str]], image: Optional[str], step_params: str,
                   name: str = "training"):
    """Pipeline ``name`` for ``image`` with the defaults of the params file (+ overrides)."""
    import importlib

    root = str(project_root(name))
    if root not in sys.path:
        sys.path.insert(0, root)
    p = load(params_file, overrides)
    module = importlib.import_module(f"pipelines.{name}")
    return module.build(image or p.launch.image, p, params_file=step_params), p


def parse_args(items: Optional[list[str]]) -> dict:
    """``["epochs=2", "gate_floors={i2t_R@1: 0.3}"]`` -> ``{"epochs": 2, "gate_floors": {...}}``."""
    out = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            fail(f"--arg {item!r} must look like NAME=VALUE")
        out[name.strip()] = yaml.safe_load(raw)
    return out


def _check_names(pipeline, args: dict) -> None:
    known = set(pipeline.component_spec.inputs or {})
    unknown = sorted(set(args) - known)
    if unknown:
        fail(f"unknown pipeline parameter(s) {unknown}; known: {sorted(known)}")


def compile_to(pipeline, out: str) -> Path:
    from kfp import compiler

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    return path


@pipeline_app.command("compile")
def compile_cmd(out: str = typer.Option("pipeline.yaml", "--out", "-o", help="the YAML to upload in the KFP UI"),
                image: Optional[str] = ImageOpt, name: str = PipelineOpt, params: str = ParamsOpt,
                set: Optional[list[str]] = SetOpt) -> None:
    """Write the pipeline YAML (IR) to upload in the Kubeflow UI or pass to `cafe pipeline submit`."""
    pipeline, p = build_pipeline(params, set, image, params, name)
    path = compile_to(pipeline, out)
    console.print(f"pipeline {pipeline.name} (image {image or p.launch.image}) -> {path}")


@pipeline_app.command("run")
def run_cmd(local: bool = typer.Option(False, "--local", help="run with KFP's local runner, steps as subprocesses"),
            pipeline_root: str = typer.Option(".kfp-local", help="where the local runner keeps artifacts"),
            args: Optional[list[str]] = ArgOpt, params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Run the same pipeline here (train_mode=local: the trainer runs in the train step), on the embedded
    default unless --arg / -s say otherwise."""
    if not local:
        fail("only --local runs here; use `cafe pipeline submit` for a KFP endpoint")
    from kfp import local as kfp_local

    step_params = str(Path(params).resolve()) if Path(params).is_file() else params
    pipeline, p = build_pipeline(params, set, None, step_params)
    arguments = {"train_mode": "local", "s3_endpoint": "", "overrides": list(set or []), **parse_args(args)}
    _check_names(pipeline, arguments)
    inputs = pipeline.component_spec.inputs
    for name in ("data_uri", "eval_data_uri", "base_model"):
        where = str(arguments.get(name, inputs[name].default))
        if "://" not in where and not Path(where).exists():
            fail(f"{name} {where} does not exist; on the embedded default run `cafe synth` and `cafe pretrain` "
                 f"first (or `make demo`), or pass --arg {name}=...")
    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
                   raise_on_error=True)
    console.print(f"running {pipeline.name} locally: {arguments}")
    pipeline(**arguments)
    console.print(f"done; artifacts under {pipeline_root}/, registry {arguments.get('registry_store', p.registry.store)}")


@pipeline_app.command("submit")
def submit_cmd(host: str = typer.Option(..., "--host", help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow"),
               package: Optional[str] = typer.Option(None, "--package", help="compiled YAML (default: compile now)"),
               experiment: str = typer.Option("cafe", "--experiment", help="experiment name (created if missing)"),
               run_name: Optional[str] = typer.Option(None, "--run-name"),
               namespace: Optional[str] = typer.Option(None, "--namespace", help="Kubeflow profile namespace"),
               token: Optional[str] = typer.Option(None, "--token", envvar="KFP_TOKEN", help="bearer token"),
               image: Optional[str] = ImageOpt, args: Optional[list[str]] = ArgOpt, name: str = PipelineOpt,
               params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Send the pipeline to a KFP endpoint as a run (compiled from the params file unless --package)."""
    import tempfile

    import kfp

    arguments = parse_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        if package is None:
            pipeline, _ = build_pipeline(params, set, image, params, name)
            _check_names(pipeline, arguments)
            package = str(compile_to(pipeline, f"{tmp}/pipeline.yaml"))
        client = kfp.Client(host=host, namespace=namespace, existing_token=token)
        result = client.create_run_from_pipeline_package(package, arguments=arguments, run_name=run_name,
                                                         experiment_name=experiment, namespace=namespace)
    console.print(f"run {result.run_id} submitted to {host} (experiment {experiment})")
    print(result.run_id)
