"""The training pipeline: repurpose -> (mine) -> train -> evaluate (against the base model) -> gate -> register,
the last only when the gate passes; an exit handler deletes the run's PyTorchJob when the run fails or is
cancelled. The mine step mines hard negatives only with the run parameter ``mine_negatives`` (otherwise it
leaves an empty artifact and training uses in-batch negatives only).

``build(image, params)`` fixes the image every step runs in (KFP takes a component's image when compiling)
and takes the UI parameters' defaults from ``params``; the same image is a run parameter for the PyTorchJob.
"""


from kfp import dsl, kubernetes

from cafe.cluster.jobs import S3_SECRET_KEYS
from cafe.config import Params
from components import component
from components.cleanup import cleanup
from components.evaluate import evaluate
from components.gate import gate
from components.mine import mine
from components.register import register
from components.repurpose import repurpose
from components.train import train

NAME = "cafe-training"
# deterministic steps are cached (same inputs -> reuse the outputs); training and registering are not, nor is
# the gate, whose reference (the registry's production version) can change between runs with the same inputs
CACHED = {"repurpose": True, "mine": False, "train": False, "evaluate": True, "gate": False, "register": False,
          "cleanup": False}
STORE_STEPS = ("repurpose", "mine", "train", "evaluate", "gate", "register")  # these read or write s3:// URIs


def _with_store(task, secret) -> None:
    """Object-store credentials from the Kubernetes Secret the manifests create (cafe-s3-credentials)."""
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={k: k for k in S3_SECRET_KEYS})


def _on_gpu_nodes(task, params: Params) -> None:
    """The train step runs where the GPU jobs run (launch.node_selector / launch.tolerations)."""
    for key, value in params.launch.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for t in params.launch.tolerations:
        kubernetes.add_toleration(task, **t.model_dump(exclude_none=True))


def build(image: str, params: Params, params_file: str = "params.yaml"):
    """The pipeline with every step in ``image`` and the defaults of ``params`` (``params_file`` is the path
    the steps read: inside the image, or any path for a local run)."""
    ops = {f.__name__: component(f, image) for f in (repurpose, mine, train, evaluate, gate, register, cleanup)}
    obj, la = params.train.objective, params.launch

    @dsl.pipeline(name=NAME, description="CAFe fine-tuning: repurpose, train (PyTorchJob), evaluate, gate, "
                                         "register when the gate passes.")
    def training(data_uri: str = params.repurpose.image_root, eval_data_uri: str = params.evaluate.data,
                 base_model: str = params.train.base_model, alpha_lm: float = obj.alpha_lm,
                 alpha_con: float = obj.alpha_con, temperature: float = obj.temperature,
                 epochs: float = params.train.epochs, max_steps: int = params.train.max_steps,
                 train_mode: str = "cluster", image: str = image, nodes: int = la.nodes,
                 gpus_per_node: int = la.gpus_per_node, gate_floors: dict = dict(params.gate.floors),
                 gate_max_regression: dict = dict(params.gate.max_regression),
                 checkpoint_root: str = params.train.checkpoint_store or "runs/pipeline",
                 registry_store: str = params.registry.store, model_name: str = params.registry.name,
                 mine_negatives: bool = False, mining_model: str = "production",
                 s3_endpoint: str = la.s3_endpoint, s3_secret: str = la.secret,
                 params_file: str = params_file, overrides: list = []):  # noqa: B006 - KFP reads the default
        """CAFe fine-tuning: repurpose, train, evaluate base and CAFe, gate, register when the gate passes.

        Args:
            data_uri: Instruction folder to train on (instructions.json + images), an s3:// URI or a local path.
            eval_data_uri: Held-out evaluation folder (the shapes world's eval/ layout), s3:// or local.
            base_model: Model to fine-tune: a hub id, an s3:// folder or a local folder.
            alpha_lm: Weight of the autoregressive (captioning) loss.
            alpha_con: Weight of the contrastive loss.
            temperature: Contrastive temperature tau.
            epochs: Training epochs (ignored when max_steps > 0).
            max_steps: Training steps; 0 means use epochs.
            train_mode: cluster (a PyTorchJob the train step follows) or local (the trainer in the train step).
            image: Container image of the PyTorchJob (the steps' image is fixed when compiling).
            nodes: Nodes of the PyTorchJob.
            gpus_per_node: GPUs per node (one process each).
            gate_floors: Gate floors, metric -> minimum value (merged into the params file's).
            gate_max_regression: Gate's allowed drops against the reference, metric -> absolute drop.
            checkpoint_root: Object-store prefix for the job's checkpoints (one folder per run).
            registry_store: Model registry store (s3:// prefix or a local folder).
            model_name: Registered model name.
            mine_negatives: Mine hard negatives for the pairs (cafe mine) and train with them in L_con.
            mining_model: The model that mines: a registry alias or version of model_name, or a model folder.
            s3_endpoint: S3/MinIO endpoint URL for s3:// URIs (empty: the environment's).
            s3_secret: Kubernetes Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
            params_file: Params file every step reads (a path inside the image).
            overrides: Extra section.key=value overrides applied by every step.
        """
        common = dict(params_file=params_file, overrides=overrides)
        tasks = {}
        exit_task = ops["cleanup"](train_mode=train_mode, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **common)
        tasks["cleanup"] = exit_task
        with dsl.ExitHandler(exit_task, name="delete-job-on-failure"):
            pairs = tasks["repurpose"] = ops["repurpose"](data_uri=data_uri, s3_endpoint=s3_endpoint, **common)
            mined = tasks["mine"] = ops["mine"](pairs=pairs.outputs["pairs"], mine_negatives=mine_negatives,
                                                mining_model=mining_model, registry_store=registry_store,
                                                model_name=model_name, s3_endpoint=s3_endpoint, **common)
            base = dsl.importer(artifact_uri=base_model, artifact_class=dsl.Model, reimport=False,
                                metadata={"role": "base model"})
            trained = tasks["train"] = ops["train"](
                pairs=pairs.outputs["pairs"], base_model=base_model, train_mode=train_mode,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, checkpoint_root=checkpoint_root, alpha_lm=alpha_lm,
                alpha_con=alpha_con, temperature=temperature, epochs=epochs, max_steps=max_steps, image=image,
                nodes=nodes, gpus_per_node=gpus_per_node, s3_endpoint=s3_endpoint,
                negatives=mined.outputs["negatives"], **common)
            _on_gpu_nodes(trained, params)
            base_eval = ops["evaluate"](model=base.output, eval_data_uri=eval_data_uri, s3_endpoint=s3_endpoint,
                                        **common).set_display_name("evaluate-base")
            model_eval = tasks["evaluate"] = ops["evaluate"](
                model=trained.outputs["model"], eval_data_uri=eval_data_uri, s3_endpoint=s3_endpoint,
                reference=base_eval.outputs["evaluation"], **common).set_display_name("evaluate-cafe")
            verdict = tasks["gate"] = ops["gate"](
                evaluation=model_eval.outputs["evaluation"], reference=base_eval.outputs["evaluation"],
                gate_floors=gate_floors, gate_max_regression=gate_max_regression, registry_store=registry_store,
                model_name=model_name, s3_endpoint=s3_endpoint, **common)
            with dsl.If(verdict.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - a KFP condition
                tasks["register"] = ops["register"](
                    model=trained.outputs["model"], evaluation=model_eval.outputs["evaluation"],
                    gate_result=verdict.outputs["result"], pairs=pairs.outputs["pairs"],
                    negatives=mined.outputs["negatives"],
                    eval_data_uri=eval_data_uri, registry_store=registry_store, model_name=model_name, s3_endpoint=s3_endpoint, **common)
        for name, task in tasks.items():
            task.set_caching_options(CACHED[name])
            if name in STORE_STEPS:
                _with_store(task, s3_secret)
        base_eval.set_caching_options(CACHED["evaluate"])
        _with_store(base_eval, s3_secret)

    return training
