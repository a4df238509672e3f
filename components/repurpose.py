from kfp.dsl import Dataset, Output


def repurpose(data_uri: str, params_file: str, overrides: list, s3_endpoint: str, pairs: Output[Dataset]):
    """Instruction data at ``data_uri`` (local folder or s3://) -> (image, caption) pairs + their data version.
    The one place the pipeline calls the data stage."""
    from pathlib import Path

    from cafe.data.repurpose import repurpose as run
    from cafe.pipeline_io import ensure_data_version, localize, stage_params, use_endpoint

    use_endpoint(s3_endpoint)
    source = localize(data_uri, Path(pairs.path).parent / "source")
    out = Path(pairs.path)
    out.mkdir(parents=True, exist_ok=True)
    p, _ = stage_params(params_file, overrides, {"repurpose.input": str(source / "instructions.json"),
                                                 "repurpose.image_root": str(source),
                                                 "repurpose.out": str(out / "train.jsonl")})
    counts = run(p.repurpose)
    pairs.metadata.update({"source": data_uri, "pairs_file": "train.jsonl", "counts": counts,
                           "data_version": ensure_data_version(out, out / "train.jsonl")})
    print(f"pairs -> {out}: {counts}")
