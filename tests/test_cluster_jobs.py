"""`cafe launch`: PyTorchJob / TrainJob manifests valid against the CRDs' own schemas, the right topology, and a
command line that re-creates the launched config inside the job."""

from __future__ import annotations

import re

import pytest
import typer.main
import yaml
from torch.distributed.run import get_args_parser
from typer.testing import CliRunner

from cafe.cli import app
from cafe.cluster.jobs import (ANNOTATION_DIGEST, LaunchError, build_pytorchjob, build_trainjob, job_overrides,
                               job_params, launch_warnings, run_digest)
from cafe.config import ConfigError, load_params
from kube_schemas import crd_errors

PAPER = ["launch.nodes=2", "launch.gpus_per_node=8", "launch.global_batch=1024", "train.epochs=1",
         "train.objective.alpha_con=10"]
ELASTIC = ["launch.elastic.enabled=true", "launch.elastic.min_nodes=1", "launch.elastic.max_nodes=4",
           "launch.elastic.max_restarts=5", "launch.nodes=2", "launch.gpus_per_node=4"]
# what the training operator (v1) / Trainer (v2) inject into each pod, for the kubelet's $(VAR) expansion
OPERATOR_ENV = {"RANK": "1", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456",
                "PET_RDZV_ENDPOINT": "job-worker-0:29400"}


def job(overrides, build=build_pytorchjob, params_file="params.yaml"):
    return build(load_params(params_file, overrides), params_file=params_file, overrides=overrides)


def containers(doc):
    if doc["kind"] == "TrainJob":
        return [doc["spec"]["trainer"]]
    return [c for r in doc["spec"]["pytorchReplicaSpecs"].values() for c in r["template"]["spec"]["containers"]]


def parse_command(command: list[str]):
    """The container command as torchrun and then `cafe train` read it, after the kubelet expands $(VAR)."""
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: OPERATOR_ENV[m[1]], arg) for arg in command]
    assert expanded[0] == "torchrun"
    run = get_args_parser().parse_args(expanded[1:])
    assert run.module and run.training_script == "cafe.cli" and run.training_script_args[0] == "train"
    train = typer.main.get_command(app).commands["train"]
    ctx = train.make_context("train", list(run.training_script_args[1:]))
    return run, ctx.params


@pytest.mark.parametrize("overrides", [
    [], PAPER, ELASTIC,
    ["launch.gpus_per_node=0", "launch.nproc_per_node=2", "launch.nodes=3"],  # CPU job
    PAPER + ["launch.node_selector={nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}",
             "launch.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
             "launch.service_account=cafe-pipeline", "launch.ttl_seconds_after_finished=3600",
             "launch.env={HF_HUB_OFFLINE: '1'}"],
])
def test_pytorchjob_validates_against_crd_schema(overrides):
    assert crd_errors(job(overrides)) == []


@pytest.mark.parametrize("overrides", [[], PAPER, PAPER + ["launch.node_selector={pool: gpu}",
                                                           "launch.tolerations=[{key: gpu, operator: Exists}]"]])
def test_trainjob_validates_against_crd_schema(overrides):
    doc = job(overrides, build_trainjob)
    assert crd_errors(doc) == []
    assert doc["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert doc["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = doc["spec"]["trainer"]
    launch = load_params("params.yaml", overrides).launch
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (launch.nodes, launch.procs_per_node)


def test_schema_check_can_fail():
    doc = job(PAPER)
    doc["spec"]["nprocPerNodes"] = "8"  # a typo the API server would prune silently
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    errors = crd_errors(doc)
    assert any("nprocPerNodes" in e for e in errors) and any("replicas" in e for e in errors)
    bad_name = job(PAPER, build_trainjob)
    bad_name["metadata"]["name"] = "Train_Job"
    assert any("metadata/name" in e for e in crd_errors(bad_name))


def test_fixed_job_has_one_master_and_the_rest_workers():
    spec = job(PAPER)["spec"]
    assert "elasticPolicy" not in spec
    assert {k: r["replicas"] for k, r in spec["pytorchReplicaSpecs"].items()} == {"Master": 1, "Worker": 1}
    assert spec["nprocPerNode"] == "8"
    single = job([])["spec"]["pytorchReplicaSpecs"]
    assert list(single) == ["Master"] and single["Master"]["replicas"] == 1


def test_elastic_job_has_workers_only_and_its_policy():
    doc = job(ELASTIC)
    spec = doc["spec"]
    assert list(spec["pytorchReplicaSpecs"]) == ["Worker"]  # a Master makes the operator miscount nodes
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    policy = spec["elasticPolicy"]
    assert (policy["minReplicas"], policy["maxReplicas"], policy["maxRestarts"]) == (1, 4, 5)
    assert policy["rdzvBackend"] == "c10d"
    (container,) = containers(doc)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["pytorchjob-port"] == policy["rdzvPort"]  # the operator builds PET_RDZV_ENDPOINT from it
    run, _ = parse_command(container["command"])
    assert (run.nnodes, run.nproc_per_node, run.max_restarts) == ("1:4", "4", 5)
    assert (run.rdzv_backend, run.rdzv_endpoint, run.rdzv_id) == ("c10d", "job-worker-0:29400", "cafe-train")


@pytest.mark.parametrize("build", [build_pytorchjob, build_trainjob])
def test_command_line_parses_back_into_the_launched_config(build):
    overrides = PAPER + ["train.strategy=deepspeed", "train.deepspeed_config=configs/deepspeed/zero3.json",
                         "train.grad_cache_chunk=16", "launch.image=registry.local/cafe:abc123"]
    launched = load_params("params.yaml", overrides)
    doc = job(overrides, build)
    for container in containers(doc):
        run, cli = parse_command(container["command"])
        assert (run.nnodes, run.nproc_per_node) == ("2", "8")
        in_job = load_params(cli["params"], cli["set"])
        # every section but launch (which only the launcher reads) is what was launched, plus the batch split
        expected = job_params(launched, job_overrides(launched, launched.launch, overrides))
        assert in_job.model_dump(exclude={"launch"}) == expected.model_dump(exclude={"launch"})
        assert in_job.train.batch_size * 16 == 1024
        assert (in_job.train.strategy, in_job.train.grad_cache_chunk) == ("deepspeed", 16)
        assert not any(s.startswith("launch.") for s in cli["set"])
    assert doc["metadata"]["annotations"][ANNOTATION_DIGEST] == run_digest(expected)


def test_fixed_job_rendezvous_comes_from_the_operator():
    (master, worker) = containers(job(PAPER))
    run, _ = parse_command(worker["command"])
    assert (run.node_rank, run.master_addr, run.master_port) == (1, "job-master-0", 23456)


def test_pods_get_gpus_shared_memory_credentials_and_nccl_settings():
    doc = job(PAPER + ["launch.secret=my-minio", "launch.shm_size=32Gi"])
    for kind, replica in doc["spec"]["pytorchReplicaSpecs"].items():
        pod = replica["template"]["spec"]
        (c,) = pod["containers"]
        assert c["name"] == "pytorch" and c["image"] == "ghcr.io/cafe-project/cafe:0.1.0"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        (shm,) = pod["volumes"]
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
        assert {"name": shm["name"], "mountPath": "/dev/shm"} in c["volumeMounts"]
        env = {e["name"]: e for e in c["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "my-minio", "key": key}
            assert "value" not in env[key]
        assert env["NCCL_DEBUG"]["value"] == "WARN" and env["CAFE_S3_ENDPOINT"]["value"].startswith("http")
        assert pod["securityContext"]["runAsNonRoot"] is True
    cpu = job(["launch.gpus_per_node=0"])
    (c,) = containers(cpu)
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and not any(e["name"].startswith("NCCL")
                                                                        for e in c["env"])


@pytest.mark.parametrize("overrides, field", [
    (["launch.global_batch=1000", "launch.nodes=2", "launch.gpus_per_node=8"], "global_batch"),
    (["launch.elastic.enabled=true", "launch.nodes=5", "launch.elastic.max_nodes=4"], "elastic"),
    (["launch.name=CAFe_train"], "name"),
])
def test_bad_launch_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_params("params.yaml", overrides)


def test_launch_errors():
    with pytest.raises(LaunchError, match="elastic"):
        job(ELASTIC, build_trainjob)
    with pytest.raises(LaunchError, match="relative"):
        build_pytorchjob(load_params("params.yaml"), params_file="/etc/cafe/params.yaml")


def test_missing_deepspeed_config_is_reported(tmp_path):
    p = load_params("params.yaml", ["train.strategy=deepspeed", "train.deepspeed_config=configs/deepspeed/z9.json"])
    assert any("z9.json" in w for w in launch_warnings(p, tmp_path))
    (tmp_path / "configs/deepspeed").mkdir(parents=True)
    (tmp_path / "configs/deepspeed/z9.json").write_text("{}")
    assert launch_warnings(p, tmp_path) == []


def test_cli_writes_yaml_and_rejects_bad_config(tmp_path):
    out = tmp_path / "job.yaml"
    runner = CliRunner()
    result = runner.invoke(app, ["launch", "-o", str(out), *sum((["-s", o] for o in ELASTIC), [])])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(out.read_text())
    assert crd_errors(doc) == [] and list(doc["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    bad = runner.invoke(app, ["launch", "-s", "launch.kind=trainjob", *sum((["-s", o] for o in ELASTIC), [])])
    assert bad.exit_code == 2 and "elastic" in bad.output
