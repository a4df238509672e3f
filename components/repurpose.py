from kfp.dsl import Dataset, Output


def repurpose(data_uri: str, params_file: str, overrides: list, s3_endpoint: str, pairs: Output[Dataset]):
    """The repurpose stage on the instruction folder ``data_uri`` (local or s3://) -> the shards (``pairs``)."""
    from cafe.pipeline_io import stage_params, use_endpoint
    from cafe.stages.repurpose import repurpose as run

    use_endpoint(s3_endpoint)
    p, _ = stage_params(params_file, overrides, {"repurpose.progress": False})
    stats = run(p.repurpose, source=data_uri, out=pairs.path)
    pairs.metadata.update({"source": data_uri, **{k: stats[k] for k in ("kept", "quarantined", "duplicates",
                                                                        "data_version")}})
    print(f"pairs -> {pairs.path}: {stats['kept']} kept of {stats['input']}, data version {stats['data_version']}")
