from kfp.dsl import Artifact, Dataset, Input, Output


def retrain(pairs: Input[Dataset], params_file: str, overrides: list, mode: str, kfp_host: str,
            training_package: str, request: Output[Artifact]) -> str:
    """The retrain stage on the window's feedback pairs: the training pipeline on ``kfp_host`` (mode kfp),
    repurpose + fine-tune here (local), or only the request (record); returns what was started."""
    import json

    from cafe.config import load_params
    from cafe.stages.retrain import retrain as run

    started = run(load_params(params_file, overrides), pairs.path, mode, request.path, kfp_host=kfp_host,
                  training_package=training_package, pairs_uri=pairs.uri)
    request.metadata.update({"pairs_count": started["pairs_count"], "mode": mode})
    print(f"retraining ({mode}) on {started['pairs_count']} window pairs: {started['started']}")
    return json.dumps(started["started"])
