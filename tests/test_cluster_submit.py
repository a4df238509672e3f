"""Submitting, following and deleting jobs through the real Kubeflow / Kubernetes clients, against a minimal
API server on 127.0.0.1 (tests/kube_api.py) that checks bodies against the CRD schemas."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cafe.cli import app
from cafe.cluster.submit import JobFailed, JobRef, client_configuration, delete_job, follow, submit
from cafe.config import load_params
from kube_api import kube_api  # noqa: F401  (fixture)

PAPER = ["launch.nodes=2", "launch.gpus_per_node=8", "launch.global_batch=1024"]


@pytest.mark.parametrize("kind, plural, done", [("pytorchjob", "pytorchjobs", "Succeeded"),
                                                ("trainjob", "trainjobs", "Complete")])
def test_submit_follow_and_delete(kube_api, kind, plural, done):
    overrides = PAPER + [f"launch.kind={kind}", f"launch.kubeconfig={kube_api.kubeconfig}"]
    params = load_params("params.yaml", overrides)
    cfg = client_configuration(params.launch.kubeconfig)
    job = submit(params, params_file="params.yaml", overrides=overrides, cfg=cfg)
    assert job == JobRef("cafe-train", "cafe", kind)
    stored = kube_api.objects[(plural, "cafe", "cafe-train")]
    assert stored["metadata"]["name"] == "cafe-train"

    kube_api.script = [("Created", "created"), ("Running", "2 pods running"), (done, "finished")]
    heard = []
    assert follow(job, cfg, poll_seconds=0.01, on_change=lambda c, m: heard.append(c)) == done
    assert heard == ["Created", "Running", done]

    assert delete_job("cafe-train", kind=kind, namespace="cafe", cfg=cfg) is True
    assert (plural, "cafe", "cafe-train") not in kube_api.objects
    assert delete_job("cafe-train", kind=kind, namespace="cafe", cfg=cfg) is False  # exit handler may run twice


def test_failed_job_raises_with_the_operators_message(kube_api):
    overrides = [f"launch.kubeconfig={kube_api.kubeconfig}"]
    params = load_params("params.yaml", overrides)
    cfg = client_configuration(kube_api.kubeconfig)
    job = submit(params, overrides=overrides, cfg=cfg)
    kube_api.script = [("Created", ""), ("Running", ""), ("Failed", "pod cafe-train-master-0 OOMKilled")]
    with pytest.raises(JobFailed, match="OOMKilled"):
        follow(job, cfg, poll_seconds=0.01)
    kube_api.script = [("Created", "")]
    with pytest.raises(TimeoutError):
        follow(JobRef("cafe-train", "cafe", "pytorchjob"), cfg, poll_seconds=0.01, timeout_seconds=0.05)


def test_api_server_rejects_an_invalid_body(kube_api):
    """The fake server enforces the CRD schema, so the tests above would catch an invalid submission."""
    from kubernetes import client as k8s

    api = k8s.CustomObjectsApi(k8s.ApiClient(client_configuration(kube_api.kubeconfig)))
    body = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "x"},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": "one"}}}}
    with pytest.raises(k8s.ApiException) as err:
        api.create_namespaced_custom_object("kubeflow.org", "v1", "cafe", "pytorchjobs", body)
    assert err.value.status == 422


def test_cli_submit_follow_and_delete(kube_api, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", kube_api.kubeconfig)
    kube_api.script = [("Created", ""), ("Succeeded", "done")]
    runner = CliRunner()
    result = runner.invoke(app, ["launch", "--submit", "-s", "launch.poll_seconds=1", "-s", "launch.nodes=2"])
    assert result.exit_code == 0, result.output
    assert ("pytorchjobs", "cafe", "cafe-train") in kube_api.objects and "Succeeded" in result.output
    kube_api.script = [("Created", ""), ("Failed", "NCCL timeout")]
    again = runner.invoke(app, ["launch", "--submit", "-s", "launch.poll_seconds=1", "-s", "launch.name=cafe-two"])
    assert again.exit_code == 1 and "NCCL timeout" in again.output
    deleted = runner.invoke(app, ["delete-job", "cafe-train"])
    assert deleted.exit_code == 0 and "deleted" in deleted.output
    assert runner.invoke(app, ["delete-job", "cafe-train"]).exit_code == 0
