from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


def register(model: Input[Model], evaluation: Input[Artifact], gate_result: Input[Artifact], pairs: Input[Dataset],
             eval_data_uri: str, registry_store: str, model_name: str, params_file: str, overrides: list,
             s3_endpoint: str, version: Output[Artifact], model_card: Output[Markdown],
             negatives: Input[Dataset] = None):
    """The register stage: model, card, metrics, per-item results, gate, params, lineage and the monitor
    reference (on the evaluation data's probe set) -> the version record (``version``) and its model card.
    Runs only when the gate passed; the lineage names the mine step's ``negatives`` when it mined any."""
    from cafe.pipeline_io import stage_params, use_endpoint
    from cafe.stages.register import register as run

    use_endpoint(s3_endpoint)
    p, _ = stage_params(params_file, overrides, {"registry.store": registry_store, "registry.name": model_name})
    record = run(p, model.path, evaluation.path, gate_result.path, data_version=pairs.path,
                 parent=model.metadata.get("base_model"), reference_data=eval_data_uri,
                 record_out=version.path, card_out=model_card.path,
                 negatives=negatives.path if negatives is not None else None)
    version.metadata.update({k: record[k] for k in ("name", "version", "data_version")} |
                            {"store": p.registry.store, "alias": p.registry.alias_on_register})
    print(f"registered {record['name']} v{record['version']} in {p.registry.store}")
