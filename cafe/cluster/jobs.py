"""The training job as Kubernetes objects: a Kubeflow PyTorchJob (``kubeflow.org/v1``) or a Kubeflow Trainer v2
TrainJob (``trainer.kubeflow.org/v1alpha1``), built with the Kubeflow SDKs' typed models from the config.

Every pod runs ``torchrun ... -m cafe.cli train -p <params file> -s <override> ...``: the params file is the
one baked into the image (same commit as the launching checkout) and the overrides are the ones given to
``cafe launch`` plus the per-process batch size derived from ``launch.global_batch``, so the job re-creates
exactly the config it was launched with (its digest is stored as an annotation).

A fixed-size PyTorchJob has a Master and ``nodes - 1`` Workers; torchrun joins them through the
MASTER_ADDR / MASTER_PORT / RANK variables the training operator injects. An elastic job has Workers only
(a Master makes the operator miscount nodes) and an elastic policy; torchrun meets at the c10d rendezvous the
operator names in PET_RDZV_ENDPOINT, and restarts the worker group up to ``max_restarts`` times, each time
resuming from the newest complete checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from kubernetes import client as k8s

from cafe.config import LaunchConfig, Params, _merge, parse_overrides

PYTORCHJOB_API = ("kubeflow.org", "v1", "pytorchjobs")
TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
CONTAINER = "pytorch"  # the training operator finds the container (and its port) by this name
PORT_NAME = "pytorchjob-port"
TRAINJOB_NODE = "node"  # the torch-distributed runtime's replicated job and container
PATCH_MANAGER = "cafe.dev/launch"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
ANNOTATION_DIGEST = "cafe.dev/params-digest"


class LaunchError(ValueError):
    """A launch request that cannot become a valid job (the message names the setting to change)."""


def job_overrides(params: Params, launch: LaunchConfig, overrides: Sequence[str] = ()) -> list[str]:
    """The ``-s`` overrides the job passes to ``cafe train``: the caller's (``launch.*`` dropped, the job
    does not need them) and ``train.batch_size`` derived from ``launch.global_batch``."""
    forwarded = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("launch.")]
    if launch.global_batch:
        per_process = launch.global_batch // (launch.nodes * launch.procs_per_node)
        forwarded = [o for o in forwarded if o.split("=", 1)[0].strip() != "train.batch_size"]
        forwarded.append(f"train.batch_size={per_process}")
    return forwarded


def job_params(params: Params, overrides: Sequence[str]) -> Params:
    """``params`` with the job's overrides applied: the config every rank of the job will run."""
    return Params.model_validate(_merge(params.model_dump(mode="json"), parse_overrides(list(overrides))))


def check_params_file(params_file: str | Path) -> str:
    """The params file as the job sees it: a relative path inside the project (the image's working dir)."""
    path = PurePosixPath(Path(params_file).as_posix())
    if path.is_absolute() or ".." in path.parts:
        raise LaunchError(f"params file {params_file}: the job reads it from the image; pass a path relative to "
                          "the project root (e.g. params.yaml or configs/cluster/<name>.yaml)")
    return str(path)


def launch_warnings(params: Params, root: str | Path = ".") -> list[str]:
    """Problems the cluster would only find after scheduling: files the job needs that are not in the project."""
    warnings = []
    if params.train.strategy == "deepspeed":
        ds = params.train.deepspeed_config
        if not ds:
            warnings.append("train.strategy is deepspeed but train.deepspeed_config is empty")
        elif not (Path(root) / ds).is_file():
            warnings.append(f"train.deepspeed_config {ds} is not in this checkout; the image must contain it")
    return warnings


def cafe_train_args(params_file: str, overrides: Sequence[str]) -> list[str]:
    args = ["-m", "cafe.cli", "train", "-p", params_file]
    for item in overrides:
        args += ["-s", item]
    return args


def torchrun_command(launch: LaunchConfig, kind: str, params_file: str, overrides: Sequence[str]) -> list[str]:
    """``torchrun`` with the rendezvous each job kind provides; ``$(VAR)`` is expanded by the kubelet from
    the variables the operator injects."""
    procs = launch.procs_per_node
    if kind == "trainjob":  # Trainer v2 sets PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT, read by torchrun
        cmd = ["torchrun", f"--nnodes={launch.nodes}", f"--nproc-per-node={procs}"]
    elif launch.elastic.enabled:
        e = launch.elastic
        cmd = ["torchrun", f"--nnodes={e.min_nodes}:{e.max_nodes}", f"--nproc-per-node={procs}",
               f"--max-restarts={e.max_restarts}", "--rdzv-backend=c10d", f"--rdzv-id={launch.name}",
               "--rdzv-endpoint=$(PET_RDZV_ENDPOINT)"]
    else:
        cmd = ["torchrun", f"--nnodes={launch.nodes}", f"--nproc-per-node={procs}", "--node-rank=$(RANK)",
               "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"]
    return cmd + cafe_train_args(params_file, overrides)


def _env(launch: LaunchConfig) -> list[k8s.V1EnvVar]:
    env = [k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(
        secret_key_ref=k8s.V1SecretKeySelector(name=launch.secret, key=key))) for key in S3_SECRET_KEYS]
    env.append(k8s.V1EnvVar(name="CAFE_S3_ENDPOINT", value=launch.s3_endpoint))
    extra = {**(launch.nccl_env if launch.gpus_per_node else {}), **launch.env}
    env += [k8s.V1EnvVar(name=key, value=str(value)) for key, value in extra.items()]
    return env


def _resources(launch: LaunchConfig) -> k8s.V1ResourceRequirements:
    limits = {"memory": launch.memory}
    if launch.gpus_per_node:
        limits[launch.gpu_resource] = str(launch.gpus_per_node)
    return k8s.V1ResourceRequirements(requests={"cpu": launch.cpu, "memory": launch.memory}, limits=limits)


def _shm(launch: LaunchConfig) -> tuple[k8s.V1Volume, k8s.V1VolumeMount]:
    volume = k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                          size_limit=launch.shm_size))
    return volume, k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")


def _tolerations(launch: LaunchConfig) -> list[k8s.V1Toleration] | None:
    return [k8s.V1Toleration(**t.model_dump(exclude_none=True)) for t in launch.tolerations] or None


def run_digest(params: Params) -> str:
    """Digest of what the ranks run: every section but ``launch``, which only the launcher reads."""
    return params.digest(*[name for name in Params.model_fields if name != "launch"])


def _metadata(params: Params, launch: LaunchConfig, params_file: str) -> k8s.V1ObjectMeta:
    return k8s.V1ObjectMeta(
        name=launch.name, namespace=launch.namespace,
        labels={"app.kubernetes.io/name": "cafe", "app.kubernetes.io/component": "training"},
        annotations={ANNOTATION_DIGEST: run_digest(params), "cafe.dev/params-file": params_file})


def pytorchjob_model(params: Params, launch_cfg: LaunchConfig | None = None, *, params_file: str = "params.yaml",
                     overrides: Sequence[str] = ()):
    """The typed ``KubeflowOrgV1PyTorchJob`` (what ``TrainingClient.create_job`` submits)."""
    from kubeflow.training import models as kf

    launch = launch_cfg or params.launch
    params_file = check_params_file(params_file)
    run_overrides = job_overrides(params, launch, overrides)
    elastic = launch.elastic.enabled
    shm_volume, shm_mount = _shm(launch)
    container = k8s.V1Container(
        name=CONTAINER, image=launch.image, image_pull_policy=launch.image_pull_policy,
        command=torchrun_command(launch, "pytorchjob", params_file, run_overrides),
        env=_env(launch), resources=_resources(launch), volume_mounts=[shm_mount],
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=launch.elastic.rdzv_port if elastic
                                   else launch.master_port)],
        security_context=k8s.V1SecurityContext(allow_privilege_escalation=False))
    template = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels={"app.kubernetes.io/name": "cafe", "app.kubernetes.io/component": "training"}),
        spec=k8s.V1PodSpec(containers=[container], volumes=[shm_volume],
                           node_selector=launch.node_selector or None, tolerations=_tolerations(launch),
                           service_account_name=launch.service_account or None,
                           security_context=k8s.V1PodSecurityContext(run_as_non_root=True)))

    def replicas(n: int):
        return kf.KubeflowOrgV1ReplicaSpec(replicas=n, restart_policy="OnFailure", template=template)

    if elastic:
        specs = {"Worker": replicas(launch.nodes)}
        policy = kf.KubeflowOrgV1ElasticPolicy(
            min_replicas=launch.elastic.min_nodes, max_replicas=launch.elastic.max_nodes,
            max_restarts=launch.elastic.max_restarts, rdzv_backend="c10d", rdzv_id=launch.name,
            rdzv_port=launch.elastic.rdzv_port)
    else:
        specs = {"Master": replicas(1)}
        if launch.nodes > 1:
            specs["Worker"] = replicas(launch.nodes - 1)
        policy = None
    return kf.KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1", kind="PyTorchJob",
        metadata=_metadata(job_params(params, run_overrides), launch, params_file),
        spec=kf.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(launch.procs_per_node), pytorch_replica_specs=specs, elastic_policy=policy,
            run_policy=kf.KubeflowOrgV1RunPolicy(
                clean_pod_policy="Running", backoff_limit=launch.backoff_limit,
                ttl_seconds_after_finished=launch.ttl_seconds_after_finished or None)))


def build_pytorchjob(params: Params, launch_cfg: LaunchConfig | None = None, *, params_file: str = "params.yaml",
                     overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The PyTorchJob as a plain manifest dict (camelCase keys, ready for YAML or the API server).

    ``params`` is the config as launched (``params_file`` plus ``overrides``); ``launch_cfg`` defaults to
    ``params.launch``; ``overrides`` are passed on to ``cafe train`` in the job (data and output URIs, ...).
    """
    model = pytorchjob_model(params, launch_cfg, params_file=params_file, overrides=overrides)
    return k8s.ApiClient().sanitize_for_serialization(model)


def trainjob_model(params: Params, launch_cfg: LaunchConfig | None = None, *, params_file: str = "params.yaml",
                   overrides: Sequence[str] = ()):
    """The typed Trainer v2 ``TrainerV1alpha1TrainJob`` on the ``launch.runtime`` ClusterTrainingRuntime."""
    from kubeflow_trainer_api import models as tr

    launch = launch_cfg or params.launch
    if launch.elastic.enabled:
        raise LaunchError("launch.elastic: a Trainer v2 TrainJob takes elasticity from its training runtime, "
                          "not from the job; use launch.kind=pytorchjob for an elastic job")
    params_file = check_params_file(params_file)
    run_overrides = job_overrides(params, launch, overrides)
    api = k8s.ApiClient()

    def typed(cls, obj):  # kubernetes client objects -> the trainer API's pydantic twins
        return cls.from_dict(api.sanitize_for_serialization(obj))

    shm_volume, shm_mount = _shm(launch)
    pod_patch = tr.TrainerV1alpha1PodSpecPatch(
        volumes=[typed(tr.IoK8sApiCoreV1Volume, shm_volume)],
        containers=[tr.TrainerV1alpha1ContainerPatch(
            name=TRAINJOB_NODE, volume_mounts=[typed(tr.IoK8sApiCoreV1VolumeMount, shm_mount)])],
        node_selector=launch.node_selector or None,
        tolerations=[typed(tr.IoK8sApiCoreV1Toleration, t) for t in _tolerations(launch) or []] or None,
        service_account_name=launch.service_account or None,
        security_context=tr.IoK8sApiCoreV1PodSecurityContext(run_as_non_root=True))
    patch = tr.TrainerV1alpha1RuntimePatch(
        manager=PATCH_MANAGER,
        training_runtime_spec=tr.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=tr.TrainerV1alpha1JobSetTemplatePatch(spec=tr.TrainerV1alpha1JobSetSpecPatch(
                replicated_jobs=[tr.TrainerV1alpha1ReplicatedJobPatch(
                    name=TRAINJOB_NODE, template=tr.TrainerV1alpha1JobTemplatePatch(
                        spec=tr.TrainerV1alpha1JobSpecPatch(
                            template=tr.TrainerV1alpha1PodTemplatePatch(spec=pod_patch))))]))))
    return tr.TrainerV1alpha1TrainJob(
        api_version="trainer.kubeflow.org/v1alpha1", kind="TrainJob",
        metadata=typed(tr.IoK8sApimachineryPkgApisMetaV1ObjectMeta,
                       _metadata(job_params(params, run_overrides), launch, params_file)),
        spec=tr.TrainerV1alpha1TrainJobSpec(
            runtime_ref=tr.TrainerV1alpha1RuntimeRef(name=launch.runtime, kind="ClusterTrainingRuntime",
                                                     api_group="trainer.kubeflow.org"),
            trainer=tr.TrainerV1alpha1Trainer(
                image=launch.image, command=torchrun_command(launch, "trainjob", params_file, run_overrides),
                env=[typed(tr.IoK8sApiCoreV1EnvVar, e) for e in _env(launch)],
                num_nodes=launch.nodes, num_proc_per_node=launch.procs_per_node,
                resources_per_node=typed(tr.IoK8sApiCoreV1ResourceRequirements, _resources(launch))),
            runtime_patches=[patch]))


def build_trainjob(params: Params, launch_cfg: LaunchConfig | None = None, *, params_file: str = "params.yaml",
                   overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The same job as a Kubeflow Trainer v2 TrainJob manifest dict (runtime ``launch.runtime``)."""
    return trainjob_model(params, launch_cfg, params_file=params_file, overrides=overrides).to_dict()


def build_job(params: Params, launch_cfg: LaunchConfig | None = None, **kwargs) -> dict[str, Any]:
    """The job of the kind ``launch.kind`` names."""
    launch = launch_cfg or params.launch
    build = build_trainjob if launch.kind == "trainjob" else build_pytorchjob
    return build(params, launch, **kwargs)
