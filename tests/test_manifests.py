"""manifests/: every kustomization resolves, every object validates offline (built-in kinds with
kubernetes-validate, custom resources against their CRDs), the pieces fit together, and the generated
training jobs are what `cafe launch` writes today."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cafe.cluster.jobs import build_pytorchjob, build_trainjob
from cafe.cluster.launch import to_yaml
from cafe.config import load_params
from kube_schemas import CRDS, builtin_errors, crd_errors

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))
LLAVA = "configs/cluster/llava-ov-0.5b.yaml"


def _kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def assemble(directory: Path) -> list[dict]:
    """What `kustomize build` emits for the subset of kustomize used here: resources (files or directories),
    namespace, secretGenerator from env files (without a name hash)."""
    k = _kustomization(directory)
    docs = []
    for entry in k.get("resources", []):
        path = directory / entry
        docs += assemble(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("secretGenerator", []):
        data = {}
        for env_file in gen.get("envs", []):
            for line in (directory / env_file).read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, value = line.partition("=")
                    data[key.strip()] = value.strip()
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": gen["name"]},
                     "type": "Opaque", "stringData": data})
    for doc in docs:
        if "namespace" in k and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = k["namespace"]
    return docs


@pytest.fixture()
def manifests_with_credentials(tmp_path) -> Path:
    """A copy of manifests/ with credentials.env filled from its template, as a user would."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    for example in copy.rglob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    return copy


def validate(doc: dict) -> list[str]:
    if (doc["apiVersion"], doc["kind"]) in CRDS:
        return crd_errors(doc)
    return builtin_errors(doc)


def test_every_kustomization_resolves_to_files():
    assert {p.relative_to(MANIFESTS).as_posix() for p in KUSTOMIZATIONS} == {"base", "jobs", "serving"}
    referenced = set()
    for directory in KUSTOMIZATIONS:
        k = _kustomization(directory)
        for entry in k.get("resources", []):
            assert (directory / entry).exists(), f"{directory}/kustomization.yaml: {entry} does not exist"
            referenced.add((directory / entry).resolve())
        for gen in k.get("secretGenerator", []):
            for env_file in gen.get("envs", []):
                assert (directory / f"{env_file}.example").is_file(), f"{env_file} has no template"
    # every manifest is applied by some kustomization, except the TrainJob kept beside the PyTorchJob
    loose = {p.resolve() for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml"} - referenced
    assert {p.name for p in loose} == {"llava-ov-0.5b-trainjob.yaml"}


@pytest.mark.parametrize("name", ["base", "jobs"])
def test_assembled_objects_validate(manifests_with_credentials, name):
    docs = assemble(manifests_with_credentials / name)
    kinds = {d["kind"] for d in docs}
    expected = ({"Namespace", "PersistentVolumeClaim", "Deployment", "Service", "ServiceAccount", "Role",
                 "RoleBinding", "CronJob", "Secret"} if name == "base" else {"PyTorchJob"})
    assert kinds == expected
    for doc in docs:
        assert validate(doc) == [], doc["metadata"]["name"]


def test_validation_catches_a_broken_manifest(manifests_with_credentials):
    (deployment,) = [d for d in assemble(manifests_with_credentials / "base") if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["port"] = 9000  # a typo of "ports"
    assert validate(deployment)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) not installed")
@pytest.mark.parametrize("name", ["base", "jobs"])
def test_kustomize_build_matches_and_validates(manifests_with_credentials, name):
    out = subprocess.run(["kubectl", "kustomize", str(manifests_with_credentials / name)], check=True,
                         capture_output=True, text=True).stdout
    built = [d for d in yaml.safe_load_all(out) if d]
    for doc in built:
        assert validate(doc) == [], doc["metadata"]["name"]
    ours = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in
            assemble(manifests_with_credentials / name)}
    assert {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in built} == ours


def test_credentials_are_a_template_only():
    example = MANIFESTS / "base/minio/credentials.env.example"
    values = dict(line.split("=", 1) for line in example.read_text().splitlines() if "=" in line
                  and not line.startswith("#"))
    assert set(values) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(v.startswith("REPLACE") for v in values.values())
    ignored = subprocess.run(["git", "check-ignore", "-q", "manifests/base/minio/credentials.env"], cwd=ROOT)
    assert ignored.returncode == 0, "credentials.env must be git-ignored"


def test_pieces_fit_together(manifests_with_credentials):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in assemble(manifests_with_credentials / "base")}
    launch = load_params("params.yaml").launch
    # MinIO: Service selects the Deployment's pods; the in-cluster endpoint the jobs use names that Service
    service, deployment = docs[("Service", "minio")], docs[("Deployment", "minio")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert launch.s3_endpoint == f"http://minio.{service['metadata']['namespace']}.svc.cluster.local:9000"
    # one Secret, named as the jobs expect, with the keys MinIO and the jobs read
    secret = docs[("Secret", launch.secret)]
    refs = [e["valueFrom"]["secretKeyRef"] for d in (deployment, docs[("CronJob", "cafe-monitor")])
            for c in _pod(d)["containers"] for e in c["env"] if "valueFrom" in e]
    assert refs and all(r["name"] == launch.secret and r["key"] in secret["stringData"] for r in refs)
    assert docs[("PersistentVolumeClaim", "minio-data")]["metadata"]["name"] in str(deployment)
    # RBAC: pipeline pods may create, follow and delete both job kinds in the namespace
    rules = docs[("Role", "cafe-training-jobs")]["rules"]
    for group, resource in [("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs")]:
        verbs = {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}
        assert {"create", "get", "watch", "delete"} <= verbs
    binding = docs[("RoleBinding", "cafe-training-jobs")]
    assert binding["roleRef"]["name"] == "cafe-training-jobs"
    assert {"cafe-pipeline", "pipeline-runner"} == {s["name"] for s in binding["subjects"]}
    # the monitor runs `cafe monitor` in the project image, as the pipeline service account
    cron = docs[("CronJob", "cafe-monitor")]
    (container,) = _pod(cron)["containers"]
    assert container["image"] == launch.image and container["args"][0] == "monitor"
    assert _pod(cron)["serviceAccountName"] == "cafe-pipeline"


def _pod(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("build, path", [(build_pytorchjob, "llava-ov-0.5b-pytorchjob.yaml"),
                                         (build_trainjob, "llava-ov-0.5b-trainjob.yaml")])
def test_generated_jobs_are_current(build, path):
    """The committed job manifests are exactly what `cafe launch` writes now (regenerate them if this fails)."""
    generated = to_yaml(build(load_params(LLAVA), params_file=LLAVA))
    committed = (MANIFESTS / "jobs" / path).read_text()
    assert committed == generated, f"regenerate manifests/jobs/{path} with cafe launch (see its kustomization)"
    doc = yaml.safe_load(committed)
    assert crd_errors(doc) == []


def test_docs_show_what_the_command_prints():
    """docs/cluster.md 'Running on a real cluster': the shown command, run now, prints exactly the YAML shown."""
    import shlex
    import textwrap

    from typer.testing import CliRunner

    from cafe.cli import app

    text = (ROOT / "docs" / "cluster.md").read_text().split("# Running on a real cluster", 1)[1]
    command = re.search(r"```bash\n\s*(cafe launch [^\n]*)\n\s*```", text)[1]
    shown = textwrap.dedent(re.search(r"```yaml\n(.*?)\n\s*```", text, re.S)[1]) + "\n"
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 0, result.output
    printed = result.stdout
    assert printed == shown, "docs/cluster.md job listing is out of date: re-run the command and paste its output"
    doc = yaml.safe_load(shown)
    assert crd_errors(doc) == []
    spec = doc["spec"]
    assert {k: r["replicas"] for k, r in spec["pytorchReplicaSpecs"].items()} == {"Master": 1, "Worker": 1}
    assert spec["nprocPerNode"] == "8" and "train.batch_size=64" in str(spec)
