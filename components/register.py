from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


def register(model: Input[Model], evaluation: Input[Artifact], gate_result: Input[Artifact], pairs: Input[Dataset],
             registry_store: str, model_name: str, params_file: str, overrides: list, s3_endpoint: str,
             version: Output[Artifact], model_card: Output[Markdown]):
    """Register the model in the registry (local folder or s3://): files, model card, metrics, gate result,
    data version and parent; visible only when complete. Runs only when the gate passed."""
    import json
    from pathlib import Path

    from cafe.pipeline_io import stage_params, use_endpoint
    from cafe.registry import Registry, model_card as card
    from cafe.registry_cli import resolve_data_version

    use_endpoint(s3_endpoint)
    p, _ = stage_params(params_file, overrides, {"registry.store": registry_store, "registry.name": model_name})
    registry = Registry(p.registry.store)
    per_item = Path(evaluation.path) / "per_item.npz"  # lets a later gate bootstrap against this version
    record = registry.register(model.path, p.registry.name, metrics=Path(evaluation.path) / "metrics.json",
                               extra_files={"per_item.npz": per_item} if per_item.is_file() else None,
                               gate=Path(gate_result.path) / "gate.json",
                               data_version=resolve_data_version(pairs.path, p.train.data),
                               parent=model.metadata.get("base_model") or p.train.base_model,
                               alias=p.registry.alias_on_register or None)
    Path(version.path).write_text(json.dumps(record, indent=1))
    Path(model_card.path).write_text(card(record))
    version.metadata.update({"name": record["name"], "version": record["version"], "store": registry.store.uri,
                             "data_version": record["data_version"], "alias": p.registry.alias_on_register})
    print(f"registered {record['name']} v{record['version']} in {registry.store.uri}")
