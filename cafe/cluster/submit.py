"""Submit a training job to a cluster, follow it to the end, delete it (the pipeline's exit handler).

PyTorchJobs go through the Kubeflow training SDK's ``TrainingClient``; TrainJobs through the Kubernetes
custom-objects API (the Trainer v2 client builds its own jobs from runtimes and cannot submit a manifest).
Credentials: ``launch.kubeconfig`` / ``launch.context`` if given, else ``~/.kube/config``, else the pod's
service account (in a pipeline step).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from cafe.cluster.jobs import PYTORCHJOB_API, TRAINJOB_API, LaunchError, pytorchjob_model, trainjob_model
from cafe.config import LaunchConfig, Params

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# the condition that ends each kind of job well, and the one that ends it badly
DONE = {"pytorchjob": ("Succeeded", "Failed"), "trainjob": ("Complete", "Failed")}


class JobFailed(RuntimeError):
    """The job reached its Failed condition (the message carries the operator's reason)."""


@dataclass
class JobRef:
    name: str
    namespace: str
    kind: str  # pytorchjob | trainjob


def client_configuration(kubeconfig: str = "", context: str = "") -> k8s.Configuration:
    """Where the API server is and how to authenticate, like kubectl (or the pod's service account)."""
    cfg = k8s.Configuration()
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG", "")
    try:
        if kubeconfig or context or not os.path.exists(SERVICE_ACCOUNT_TOKEN):
            k8s_config.load_kube_config(config_file=kubeconfig or None, context=context or None,
                                        client_configuration=cfg)
        else:
            k8s_config.load_incluster_config(client_configuration=cfg)
    except k8s_config.ConfigException as err:
        raise LaunchError(f"no cluster configured ({err}); set launch.kubeconfig / KUBECONFIG, "
                          "or run without --submit to write the manifest") from None
    return cfg


def _training_client(cfg: k8s.Configuration, namespace: str):
    from kubeflow.training import TrainingClient

    return TrainingClient(client_configuration=cfg, namespace=namespace)


def _plural(kind: str) -> tuple[str, str, str]:
    return PYTORCHJOB_API if kind == "pytorchjob" else TRAINJOB_API


def submit(params: Params, launch: LaunchConfig | None = None, *, params_file: str = "params.yaml",
           overrides=(), cfg: k8s.Configuration | None = None) -> JobRef:
    """Create the job of kind ``launch.kind`` from the config; returns where it lives."""
    launch = launch or params.launch
    cfg = cfg or client_configuration(launch.kubeconfig, launch.context)
    kwargs = dict(params_file=params_file, overrides=overrides)
    if launch.kind == "pytorchjob":
        _training_client(cfg, launch.namespace).create_job(job=pytorchjob_model(params, launch, **kwargs))
    else:
        group, version, plural = TRAINJOB_API
        k8s.CustomObjectsApi(k8s.ApiClient(cfg)).create_namespaced_custom_object(
            group, version, launch.namespace, plural, trainjob_model(params, launch, **kwargs).to_dict())
    return JobRef(launch.name, launch.namespace, launch.kind)


def _conditions(obj: dict) -> list[dict]:
    return [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]


def follow(job: JobRef, cfg: k8s.Configuration, *, poll_seconds: float = 30, timeout_seconds: float = 7 * 86400,
           on_change: Callable[[str, str], None] | None = None) -> str:
    """Poll the job until it succeeds (returns the condition) or fails (raises :class:`JobFailed`);
    ``on_change(condition, message)`` hears every new condition. ``TimeoutError`` after ``timeout_seconds``."""
    group, version, plural = _plural(job.kind)
    api = k8s.CustomObjectsApi(k8s.ApiClient(cfg))
    good, bad = DONE[job.kind]
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout_seconds
    while True:
        obj = api.get_namespaced_custom_object(group, version, job.namespace, plural, job.name)
        for cond in _conditions(obj):
            key = (cond["type"], cond.get("lastTransitionTime", ""))
            if key not in seen:
                seen.add(key)
                if on_change:
                    on_change(cond["type"], cond.get("message", ""))
        types = {c["type"] for c in _conditions(obj)}
        if bad in types:
            message = next(c.get("message", "") for c in _conditions(obj) if c["type"] == bad)
            raise JobFailed(f"{job.kind} {job.namespace}/{job.name} failed: {message}")
        if good in types:
            return good
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job.kind} {job.namespace}/{job.name} still running after {timeout_seconds:.0f}s")
        time.sleep(poll_seconds)


def delete_job(name: str, *, kind: str = "pytorchjob", namespace: str = "cafe",
               cfg: k8s.Configuration | None = None) -> bool:
    """Delete the job and its pods (foreground); ``False`` if it was already gone. Safe to call twice,
    which is what a pipeline's exit handler needs."""
    cfg = cfg or client_configuration()
    options = k8s.V1DeleteOptions(propagation_policy="Foreground")
    try:
        if kind == "pytorchjob":
            _training_client(cfg, namespace).delete_job(name, namespace, delete_options=options)
        else:
            group, version, plural = TRAINJOB_API
            k8s.CustomObjectsApi(k8s.ApiClient(cfg)).delete_namespaced_custom_object(
                group, version, namespace, plural, name, body=options)
    except (ApiException, RuntimeError) as err:
        cause = err if isinstance(err, ApiException) else err.__cause__
        if isinstance(cause, ApiException) and cause.status == 404:
            return False
        raise
    return True
