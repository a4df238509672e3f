from kfp.dsl import Dataset, Input, Model, Output


def train(pairs: Input[Dataset], base_model: str, train_mode: str, run_id: str, checkpoint_root: str,
          alpha_lm: float, alpha_con: float, temperature: float, epochs: float, max_steps: int, image: str,
          nodes: int, gpus_per_node: int, params_file: str, overrides: list, s3_endpoint: str,
          model: Output[Model]):
    """CAFe fine-tuning. ``train_mode=cluster``: create the PyTorchJob (cafe.cluster) that reads the pairs and
    writes checkpoints at ``checkpoint_root/<job>``, follow it to the end and fetch its model;
    ``train_mode=local``: run the trainer in this process. ``base_model`` is a folder or store URI the trainer
    loads (a string, so a watching step never downloads the weights)."""
    from pathlib import Path

    from cafe.pipeline_io import copy_dir, job_name, stage_params, store_uri, use_endpoint

    use_endpoint(s3_endpoint)
    name = job_name(run_id)
    checkpoints = f"{checkpoint_root.rstrip('/')}/{name}"
    fields = {"train.objective.alpha_lm": alpha_lm, "train.objective.alpha_con": alpha_con,
              "train.objective.temperature": temperature, "train.epochs": epochs, "train.max_steps": max_steps,
              "launch.name": name, "launch.image": image, "launch.nodes": nodes,
              "launch.gpus_per_node": gpus_per_node}
    if train_mode == "local":
        from cafe.data.pairs import pairs_dataset
        from cafe.distributed import init_distributed
        from cafe.training.trainer import Trainer

        data = pairs.path
        p, _ = stage_params(params_file, overrides, {**fields, "train.data": data, "train.output": checkpoints,
                                                    "train.base_model": base_model})
        out = Trainer(p.train, p, init_distributed(p.train.backend)).fit(pairs_dataset(p), p.train.base_model,
                                                                         resume=True)
        copy_dir(out, model)
        job = None
    elif train_mode == "cluster":
        from rich.console import Console

        from cafe.cluster.launch import submit_and_follow
        from cafe.storage import open_store

        data = store_uri(pairs.uri)  # the shards folder, which the job's ShardDataset reads from s3://
        p, job_overrides = stage_params(params_file, overrides, {
            **fields, "train.data": data, "train.checkpoint_store": checkpoints,
            "train.base_model": store_uri(base_model)})
        if not submit_and_follow(p, params_file, job_overrides, True, Console()):
            raise RuntimeError(f"PyTorchJob {p.launch.namespace}/{name} did not succeed (see its pod logs)")
        open_store(checkpoints).get_dir("model", model.path)
        job = {"kind": p.launch.kind, "namespace": p.launch.namespace, "name": name}
    else:
        raise ValueError(f"train_mode {train_mode!r}: use 'cluster' (PyTorchJob) or 'local' (in this step)")
    model.metadata.update({"mode": train_mode, "job": job, "checkpoint_uri": checkpoints, "data_uri": data,
                           "base_model": base_model, "alpha_lm": alpha_lm, "alpha_con": alpha_con,
                           "temperature": temperature, "image": image})
    print(f"model -> {model.path} (checkpoints at {checkpoints})")
