from kfp.dsl import Dataset, Input, Model, Output


def train(pairs: Input[Dataset], base_model: str, train_mode: str, run_id: str, checkpoint_root: str,
          alpha_lm: float, alpha_con: float, temperature: float, epochs: float, max_steps: int, image: str,
          nodes: int, gpus_per_node: int, params_file: str, overrides: list, s3_endpoint: str,
          model: Output[Model], negatives: Input[Dataset] = None):
    """The train stage (``train_mode`` local: in this step; cluster: a PyTorchJob it follows) -> ``model``.
    ``base_model`` is a folder or store URI (a string, so a watching step never downloads the weights);
    ``negatives``: the optional mine step's output (empty when it was off)."""
    from cafe.pipeline_io import job_name, use_endpoint
    from cafe.stages.train import pipeline_train

    use_endpoint(s3_endpoint)
    name = job_name(run_id)
    fields = {"train.objective.alpha_lm": alpha_lm, "train.objective.alpha_con": alpha_con,
              "train.objective.temperature": temperature, "train.epochs": epochs, "train.max_steps": max_steps,
              "launch.name": name, "launch.image": image, "launch.nodes": nodes, "launch.gpus_per_node": gpus_per_node}
    meta = pipeline_train(train_mode, params_file, overrides, fields, pairs.path, pairs.uri, base_model,
                          f"{checkpoint_root.rstrip('/')}/{name}", model.path,
                          *((negatives.path, negatives.uri) if negatives is not None else ()))
    model.metadata.update({**meta, "alpha_lm": alpha_lm, "alpha_con": alpha_con, "temperature": temperature,
                           "image": image})
    print(f"model -> {model.path} (checkpoints at {meta['checkpoint_uri']})")
