from kfp.dsl import Dataset, Output


def repurpose(data_uri: str, params_file: str, overrides: list, s3_endpoint: str, pairs: Output[Dataset]):
    """Instruction data at ``data_uri`` (local folder or s3://) -> Parquet shards of (image, short caption, long
    caption) pairs with their stats, quarantine and data version (the shards' content hash).
    The one place the pipeline calls the data stage."""
    from pathlib import Path

    from cafe.data.repurpose import repurpose as run
    from cafe.pipeline_io import localize, stage_params, use_endpoint

    use_endpoint(s3_endpoint)
    source = localize(data_uri, Path(pairs.path).parent / "source")
    p, _ = stage_params(params_file, overrides, {"repurpose.input": str(source / "instructions.json"),
                                                 "repurpose.image_root": str(source),
                                                 "repurpose.out": pairs.path, "repurpose.progress": False})
    stats = run(p.repurpose)  # Parquet shards + stats.json + quarantine.jsonl + data_version.json
    pairs.metadata.update({"source": data_uri, "kept": stats["kept"], "quarantined": stats["quarantined"],
                           "duplicates": stats["duplicates"], "data_version": stats["data_version"]})
    print(f"pairs -> {pairs.path}: {stats['kept']} kept of {stats['input']}, data version {stats['data_version']}")
