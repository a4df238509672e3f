"""Stage `register`: a model version in the registry with everything the later stages need: weights, model
card, metrics, per-item results (a later gate bootstraps against this version), gate result, training params,
lineage (data version, code version, parent) and the monitor reference (so `cafe monitor` can watch it).

Every orchestrator (CLI, `dvc repro`, the Kubeflow pipeline, the main job) registers through this function, so
a version has the same files whoever made it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from cafe.config import Params
from cafe.data.shards import DATA_VERSION, read_data_version
from cafe.monitoring.reference import registry_files
from cafe.registry import Registry, RegistryError, model_card
from cafe.stages.reference import reference as build_reference


def resolve_data_version(value: str | None, train_data: str) -> str:
    """A hash as given, or the ``sha256`` of a ``data_version.json`` (the file, or a pairs directory holding
    it, local or ``s3://``; default: the directory ``train.data`` names)."""
    where = value or train_data
    if where.startswith("s3://"):  # a shards folder in MinIO/S3 (a KFP run)
        try:
            return read_data_version(where)
        except (FileNotFoundError, ValueError, OSError) as err:
            raise RegistryError(f"no data version: {err}") from None
    candidate = Path(where)
    if candidate.is_dir():
        candidate = candidate / DATA_VERSION
    if candidate.is_file() and candidate.suffix == ".json":
        try:
            return read_data_version(candidate)
        except ValueError as err:
            raise RegistryError(str(err)) from None
    if value:
        return value
    raise RegistryError(f"no data version: {train_data} has no data_version.json; pass --data-version HASH or "
                        "the pairs directory")


def negatives_lineage(model: str | Path, negatives: str | None) -> Path | None:
    """The data_version.json of the hard negatives the model was trained with: ``negatives`` (a `cafe mine`
    folder; one without mined negatives, a pipeline's mine step that was off, means none), else the
    ``train.negatives`` of the params.yaml saved with the model; None when it used none."""
    from cafe.mining.shards import is_negatives, read_version

    if negatives is not None:
        return Path(negatives) / DATA_VERSION if is_negatives(negatives) else None
    saved = Path(model) / "params.yaml"
    if saved.is_file():
        import yaml

        negatives = ((yaml.safe_load(saved.read_text()) or {}).get("train") or {}).get("negatives")
    if not negatives:
        return None
    try:
        read_version(negatives)
    except (FileNotFoundError, ValueError) as err:
        raise RegistryError(f"the model was trained with hard negatives {negatives}: {err}") from None
    return Path(negatives) / DATA_VERSION


def _file(path: str | Path, name: str) -> Path:
    """The JSON file an evaluation or gate folder holds (``name``), or the file itself when given one."""
    path = Path(path)
    return path / name if path.is_dir() else path


def _passed(gate_file: Path) -> bool:
    try:
        return bool(json.loads(gate_file.read_text()).get("passed"))
    except (OSError, ValueError, AttributeError):
        return False  # the registry names what is wrong with it


def register(p: Params, model: str | Path, evaluation: str | Path, gate: str | Path, *,
             data_version: str | None = None, parent: str | None = None, params: Any = None,
             alias: str | None = None, reference: str | Path | None = None, reference_data: str | None = None,
             with_reference: bool = True, allow_failed_gate: bool = False, store: str | None = None, name: str | None = None,
             record_out: str | Path | None = None, card_out: str | Path | None = None,
             negatives: str | None = None) -> dict:
    """Register ``model`` with the evaluation's metrics.json and the per_item.npz beside it, and the gate's
    gate.json (each a folder or the file) into ``store`` (default ``registry.store``) as ``name`` (default ``registry.name``); returns the
    version record.

    The monitor reference is ``reference`` (a folder from the reference stage) or built now from the model
    (on ``reference_data``'s probe set, default ``monitor.probe``); ``with_reference=False`` registers without
    one (a model `cafe monitor` cannot watch). ``data_version`` is a hash, a
    data_version.json or a pairs folder (default ``train.data``'s); ``parent`` defaults to ``train.base_model``;
    ``alias`` to ``registry.alias_on_register`` ("" for none). ``record_out`` / ``card_out`` also receive the
    record (JSON) and the model card of the version (Markdown). A model trained with mined hard negatives
    (``negatives``, default its saved ``train.negatives``) carries their version as ``negatives_version.json``
    (the pairs' version, the mining model's version and digest)."""
    metrics, gate_file = _file(evaluation, "metrics.json"), _file(gate, "gate.json")
    registry, name = Registry(store or p.registry.store, progress=True), name or p.registry.name
    version_of_data = resolve_data_version(None if data_version is None else str(data_version), p.train.data)
    with tempfile.TemporaryDirectory(prefix="cafe-register-") as tmp:
        if reference is None and with_reference and (allow_failed_gate or _passed(gate_file)):  # else the registry refuses
            reference = Path(tmp) / "reference"
            build_reference(p, model, reference, data=reference_data)
        per_item = metrics.parent / "per_item.npz"  # lets a later gate bootstrap against this version
        mined = negatives_lineage(model, negatives)
        extra = {**({"per_item.npz": per_item} if per_item.is_file() else {}),
                 **({"negatives_version.json": mined} if mined is not None else {}),
                 **(registry_files(reference) if reference is not None else {})}
        record = registry.register(model, name, metrics=metrics, gate=gate_file,
                                   extra_files=extra, data_version=version_of_data, params=params,
                                   parent=parent or p.train.base_model,
                                   alias=p.registry.alias_on_register if alias is None else (alias or None),
                                   allow_failed_gate=allow_failed_gate)
    for path, text in ((record_out, json.dumps(record, indent=1)), (card_out, model_card(record))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    return record
