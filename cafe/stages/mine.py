"""Stage `mine` (optional, between repurpose and train): hard negatives for every training pair from a model's
nearest neighbours, with the false-negative rules, or rule-made attribute swaps of its caption
(``mine.source``), as shards beside the pairs with their own data version (recording the pairs' version and
the mining model's registry version and weights digest)."""

from __future__ import annotations

from pathlib import Path

from cafe.config import Params
from cafe.data.shards import read_data_version
from cafe.mining.run import mine as run
from cafe.models import load_adapter


def resolve_mining_model(p: Params, model: str) -> dict:
    """``{"path", "ref", "version", "digest"}`` of ``model``: a model folder as it is, an ``s3://`` folder
    downloaded, else a version or alias of the registry's ``registry.name`` (e.g. "production") pulled into
    ``.cache/cafe/mine``."""
    from cafe.registry import RECORD_FILE, Registry
    from cafe.serving.index import weights_digest

    folder = Path(model)
    if model.startswith(("s3://", "minio://")):  # a model folder in the object store (a pipeline run)
        from cafe.storage import localize

        folder = localize(model, Path(".cache/cafe/mine") / "model")
    elif not folder.is_dir():
        registry = Registry(p.registry.store, progress=p.mine.progress)
        number = registry.resolve(p.registry.name, model)
        folder = Path(".cache/cafe/mine") / f"{p.registry.name}-v{number}"
        if not (folder / RECORD_FILE).is_file():
            registry.pull(p.registry.name, number, folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"mine.model {model}: {folder} holds no saved model (config.json); train one or "
                                "name a registry alias such as production")
    record = folder / RECORD_FILE
    version = None
    if record.is_file():
        import json

        data = json.loads(record.read_text())
        version = f"{data['name']}-v{data['version']}"
    return {"path": str(folder), "ref": model, "version": version, "digest": weights_digest(folder)}


def mine(p: Params, model: str | None = None, data: str | None = None, out: str | None = None,
         source: str | None = None) -> dict:
    """Mine ``data`` (default ``mine.data``) into ``out`` (default ``mine.out``) by ``source`` (default
    ``mine.source``): with ``model`` (default ``mine.model``: a folder or a registry alias), by attribute swaps
    of the captions (no model), or both; returns the summary (how many candidates each rule dropped)."""
    update = {k: str(v) for k, v in (("model", model), ("data", data), ("out", out), ("source", source))
              if v is not None}
    cfg = p.mine.model_validate({**p.mine.model_dump(), **update})
    if cfg.source == "attribute_swaps":
        return run(None, cfg, p.train.captions, read_data_version(cfg.data), None)
    identity = resolve_mining_model(p, cfg.model)
    adapter = load_adapter(identity["path"], p.prompts, p.model, fresh_tuning=False)
    return run(adapter, cfg, p.train.captions, read_data_version(cfg.data), identity, model_path=identity["path"])


def pipeline_mine(enabled: bool, params_file: str, overrides: list[str], fields: dict, pairs_path: str, model: str,
                  dest: str) -> dict:
    """The training pipeline's optional mine step: with ``enabled``, mine the pairs artifact's folder with
    ``model`` (default ``mine.model``) into ``dest``; otherwise ``dest`` stays empty and training uses in-batch
    negatives only. Returns the step's metadata."""
    from cafe.pipeline_io import stage_params

    Path(dest).mkdir(parents=True, exist_ok=True)
    if not enabled:
        return {"mined": False}
    p, _ = stage_params(params_file, overrides, {**fields, "mine.progress": False})
    summary = mine(p, model=model or None, data=pairs_path, out=dest)
    written = summary["swaps"]["written"] if "swaps" in summary else summary["directions"]
    kept = {d: info["kept"] for d, info in written.items()}
    return {"mined": True, "source": p.mine.source, "model": None if p.mine.source == "attribute_swaps"
            else model or p.mine.model, "data_version": summary["data_version"], "kept": kept}
