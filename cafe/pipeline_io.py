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


# the monitor step's HTML outputs for the run's Evidently reports (report name -> output name)
MONITOR_REPORT_OUTPUTS = {"text": "evidently_text", "image": "evidently_images"}


def monitor_outputs(summary: dict, folder: str | Path, page, reports: Mapping[str, Any],
                    summary_output: str = "summary") -> None:
    """The monitor step's HTML outputs: ``page`` the decision page (always), and each output of ``reports``
    (output name of :data:`MONITOR_REPORT_OUTPUTS` -> artifact) the Evidently report of that name from the stage's
    ``folder``, or a line saying why there is none. KFP's UI shows each HTML artifact on its own, so the page
    names the output holding each report (and ``summary_output``) where the stage's page links the file."""
    from cafe.monitoring.page import REPORT_TITLES, decision_page

    keys = summary.get("reports")
    where = {"summary.json": f"this step's output '{summary_output}'"}
    for name, output in MONITOR_REPORT_OUTPUTS.items():
        artifact = reports[output]
        if keys and name in keys:
            copy_file(Path(folder) / keys[name], artifact)
            where[keys[name]] = f"this step's HTML output '{output}' ({artifact.uri})"
            continue
        drift = summary["signals"].get("embedding_drift", {}).get(name, {})
        why = "monitor.report is off" if keys is None else \
            f"{drift.get('n', 0)} requests in the window, fewer than monitor.min_requests=" \
            f"{summary.get('thresholds', {}).get('min_requests')}"
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(artifact.path).write_text(
            f"<!doctype html><html><head><meta charset='utf-8'></head><body><p>No Evidently report of the "
            f"{REPORT_TITLES.get(name, name)}: {why}. The decision ({summary['decision']}) and its reasons are in "
            "this step's HTML output 'decision_page'.</p></body></html>")
    Path(page.path).parent.mkdir(parents=True, exist_ok=True)
    Path(page.path).write_text(decision_page(summary, where))
