"""What the Kubeflow components (``components/*.py``) share at run time, so each stays a thin call into cafe.

A component gets the params file (a path inside the image, or any path in a local run), the run's free-form
``-s`` overrides and its own typed pipeline parameters; :func:`stage_params` turns them into the one
:class:`~cafe.config.Params` and the override list a cluster job re-applies. The rest moves files between
KFP artifacts and the object store, and puts metrics and reports where the Kubeflow UI shows them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cafe.config import Params, load_params


def field_overrides(fields: Mapping[str, Any]) -> list[str]:
    """``{"train.epochs": 2, "gate.floors": {...}}`` -> ``["train.epochs=2", 'gate.floors={...}']`` (values as
    JSON, which the override parser reads as YAML); ``None`` and ``""`` mean "keep the params file's value"."""
    return [f"{key}={json.dumps(value)}" for key, value in fields.items() if value is not None and value != ""]


def stage_params(params_file: str, overrides: list[str] | None = None,
                 fields: Mapping[str, Any] | None = None) -> tuple[Params, list[str]]:
    """The stage's config: params file, then the run's overrides, then the component's own parameters.
    Returns it with the combined override list (what a PyTorchJob passes to ``cafe train -s``)."""
    combined = [*(overrides or []), *field_overrides(fields or {})]
    return load_params(params_file, combined), combined


def use_endpoint(s3_endpoint: str) -> None:
    """Point ``s3://`` URIs at this endpoint (the pipeline's MinIO); empty keeps the environment's."""
    if s3_endpoint:
        os.environ["CAFE_S3_ENDPOINT"] = s3_endpoint


def job_name(run_id: str, prefix: str = "cafe-train") -> str:
    """The PyTorchJob's name for a pipeline run: the train step creates it, the exit handler deletes it."""
    return f"{prefix}-{hashlib.sha256(run_id.encode()).hexdigest()[:10]}"


def log_metrics(metrics_artifact, values: Mapping[str, Any]) -> dict[str, float]:
    """Every finite number in ``values`` into a KFP ``Metrics`` artifact (the run's metrics tab)."""
    logged = {}
    for key, value in values.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            metrics_artifact.log_metric(key, float(value))
            logged[key] = float(value)
    return logged


def copy_file(source: str | Path, artifact) -> None:
    """A file as the content of a file artifact (HTML, Markdown): the UI renders ``artifact.path``."""
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, artifact.path)


def copy_dir(source: str | Path, artifact) -> None:
    """A folder as the content of a directory artifact (Model, Dataset, evaluation)."""
    shutil.copytree(source, artifact.path, dirs_exist_ok=True)


def copy_file_or_note(source: str | Path, artifact, note: str) -> None:
    """``source`` as the artifact's content, or a one-line HTML page saying why there is none."""
    if Path(source).is_file():
        copy_file(source, artifact)
    else:
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(artifact.path).write_text(f"<html><body><p>{note}</p></body></html>")
