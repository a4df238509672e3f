from kfp.dsl import Dataset, Input, Output


def mine(pairs: Input[Dataset], mine_negatives: bool, mining_model: str, registry_store: str, model_name: str,
         params_file: str, overrides: list, s3_endpoint: str, negatives: Output[Dataset]):
    """The optional mine stage: hard negatives for the pairs artifact from ``mining_model`` (a folder, an s3://
    folder or an alias of ``model_name`` in ``registry_store``; empty: mine.model) -> ``negatives``; with
    ``mine_negatives`` off it stays empty."""
    from cafe.pipeline_io import use_endpoint
    from cafe.stages.mine import pipeline_mine

    use_endpoint(s3_endpoint)
    fields = {"registry.store": registry_store, "registry.name": model_name}
    meta = pipeline_mine(mine_negatives, params_file, overrides, fields, pairs.path, mining_model, negatives.path)
    negatives.metadata.update(meta)
    print(f"negatives -> {negatives.path}: {meta}")
