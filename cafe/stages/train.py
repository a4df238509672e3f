"""Stage `train`: CAFe fine-tuning, ``alpha_lm * L_lm + alpha_con * L_con``, in this process (alone or under
torchrun) or, for a pipeline run on a cluster, as a PyTorchJob that this process follows to the end."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cafe.config import Params
from cafe.data.pairs import pairs_dataset
from cafe.distributed import DistEnv, init_distributed
from cafe.training.trainer import Trainer


def train(p: Params, data: str | None = None, base_model: str | Path | Callable | None = None,
          out: str | None = None, resume: bool = True, dist: DistEnv | None = None, progress: bool = True) -> Path:
    """Fine-tune ``base_model`` (default ``train.base_model``: a folder, store URI or a callable building the
    adapter) on the shards at ``data`` (default ``train.data``) into ``out`` (default ``train.output``);
    returns the model directory ``<out>/model``."""
    update = {k: str(v) for k, v in (("data", data), ("output", out)) if v is not None}
    if base_model is not None and not callable(base_model):
        update["base_model"] = str(base_model)
    if update:
        p = p.model_copy(update={"train": p.train.model_copy(update=update)})
    dist = dist or init_distributed(p.train.backend)
    init = base_model if callable(base_model) else p.train.base_model
    val = pairs_dataset(p, "val") if p.train.eval_every else None  # the validation loss (train.eval_every)
    model = Trainer(p.train, p, dist, progress=progress).fit(pairs_dataset(p), init, resume=resume, val=val)
    if dist.is_main:
        write_plots(Path(p.train.output))
    return model


def write_plots(out: Path) -> list[Path]:
    """``train_log.jsonl`` as CSV files DVC plots natively (``dvc plots show``): ``plots/train.csv`` with the
    numeric columns every training row has, ``plots/val.csv`` likewise for validation rows (``val_loss``)."""
    import csv
    import json

    log = out / "train_log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    written = []
    for name, part in (("train", [r for r in rows if "val_loss" not in r]), ("val", [r for r in rows if "val_loss" in r])):
        part = [r for r in part if isinstance(r.get("step"), int)]
        if not part:
            continue
        columns = [k for k, v in part[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and all(isinstance(r.get(k), (int, float)) for r in part)]
        path = out / "plots" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows([[r[k] for k in columns] for r in part])
        written.append(path)
    return written


def train_job(p: Params, params_file: str, job_overrides: Sequence[str], dest: str | Path) -> dict:
    """Run ``cafe train`` as the cluster job ``launch`` describes (PyTorchJob or TrainJob), follow it, and fetch
    the model it wrote at ``<train.checkpoint_store>/model`` into ``dest``; returns the job's identity."""
    from rich.console import Console

    from cafe.cluster.launch import submit_and_follow
    from cafe.storage import open_store

    if not submit_and_follow(p, params_file, job_overrides, True, Console(stderr=True)):
        raise RuntimeError(f"{p.launch.kind} {p.launch.namespace}/{p.launch.name} did not succeed "
                           "(see its pod logs)")
    open_store(p.train.checkpoint_store).get_dir("model", dest)
    return {"kind": p.launch.kind, "namespace": p.launch.namespace, "name": p.launch.name}


def pipeline_train(mode: str, params_file: str, overrides: Sequence[str], fields: dict, pairs_path: str,
                   pairs_uri: str, base_model: str, checkpoints: str, dest: str, negatives_path: str = "",
                   negatives_uri: str = "") -> dict:
    """The training pipeline's train step: ``mode`` ``local`` trains here on the pairs artifact's folder,
    ``cluster`` runs :func:`train_job` on its store URI with checkpoints at ``checkpoints``; the model lands in
    ``dest``. ``negatives_path`` / ``_uri``: the mine step's output, used when it holds mined negatives.
    Returns the step's metadata (mode, job, data and checkpoint URIs)."""
    import shutil

    from cafe.mining.shards import is_negatives
    from cafe.pipeline_io import stage_params
    from cafe.storage import store_uri

    mined = bool(negatives_path) and is_negatives(negatives_path)
    if mined:
        fields = {**fields, "train.negatives": negatives_path if mode == "local" else store_uri(negatives_uri)}
    if mode == "local":
        p, _ = stage_params(params_file, overrides, {**fields, "train.data": pairs_path, "train.output": checkpoints,
                                                     "train.base_model": base_model})
        shutil.copytree(train(p), dest, dirs_exist_ok=True)
        job, data = None, pairs_path
    elif mode == "cluster":
        data = store_uri(pairs_uri)  # the shards folder, which the job's ShardDataset reads from s3://
        p, job_overrides = stage_params(params_file, overrides, {
            **fields, "train.data": data, "train.checkpoint_store": checkpoints,
            "train.base_model": store_uri(base_model)})
        job = train_job(p, params_file, job_overrides, dest)
    else:
        raise ValueError(f"train_mode {mode!r}: use 'cluster' (PyTorchJob) or 'local' (in this step)")
    return {"mode": mode, "job": job, "checkpoint_uri": checkpoints, "data_uri": data, "base_model": base_model,
            "negatives_uri": fields.get("train.negatives")}


def delete_failed_job(p: Params, name: str, mode: str, state: str) -> bool | None:
    """The pipeline's exit handler: a failed or cancelled cluster run's job ``name`` is deleted (with its pods);
    returns whether it was (None when there is nothing to delete)."""
    if mode != "cluster" or state == "SUCCEEDED":
        return None
    from cafe.cluster.submit import client_configuration, delete_job

    return delete_job(name, kind=p.launch.kind, namespace=p.launch.namespace,
                      cfg=client_configuration(p.launch.kubeconfig, p.launch.context))
