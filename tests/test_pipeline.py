"""The Kubeflow training pipeline: the compiled YAML (loads back, image, parameters, secrets, GPU placement,
caching, gate condition, exit handler), the components' cluster path against a fake Kubernetes API, submission
to a stub KFP API, and (slow) the whole pipeline on KFP's local runner, gate passing and failing."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from kfp import components as kfp_components
from kfp import dsl
from typer.testing import CliRunner

from cafe.cli import app
from cafe.config import ConfigError, parse_overrides
from cafe.pipeline_io import field_overrides, job_name, log_metrics, stage_params
from cafe.storage import store_uri
from conftest import make_adapter
from kube_api import kube_api  # noqa: F401  (fixture)

IMAGE = "registry.example.com/team/cafe:1.2.3-abc1234"
GPU = ['launch.node_selector={"nvidia.com/gpu.present": "true"}',
       'launch.tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]']
UI_PARAMETERS = {"data_uri", "base_model", "alpha_lm", "alpha_con", "temperature", "epochs", "nodes",
                 "gpus_per_node", "gate_floors", "gate_max_regression", "image", "train_mode"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "pipeline.yaml"
    args = ["pipeline", "compile", "--image", IMAGE, "-o", str(out)] + [a for s in GPU for a in ("-s", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_compiled_yaml_loads_back_with_the_parameters_and_the_image(compiled):
    component = kfp_components.load_component_from_file(str(compiled))
    assert component.name == "cafe-training"
    inputs = component.component_spec.inputs
    assert UI_PARAMETERS <= set(inputs)
    assert inputs["image"].default == IMAGE  # the PyTorchJob's image, a run parameter
    assert inputs["alpha_con"].default == 10.0 and inputs["gate_floors"].default["i2t_R@1"] == 0.1

    spec = yaml.safe_load(compiled.read_text().split("---")[0])
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values() if "container" in e} == {IMAGE}
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in executors.values() if "container" in e)


def test_secrets_gpu_placement_caching_gate_and_exit_handler(compiled):
    docs = list(yaml.safe_load_all(compiled.read_text()))
    spec, platform = docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for step in ("exec-repurpose", "exec-train", "exec-evaluate", "exec-evaluate-2", "exec-gate", "exec-register"):
        env = {m["envVar"] for s in platform[step]["secretAsEnv"] for m in s["keyToEnv"]}
        assert env == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert platform[step]["secretAsEnv"][0]["secretNameParameter"] == {
            "componentInputParameter": "pipelinechannel--s3_secret"}
    assert platform["exec-train"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert platform["exec-train"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                      "effect": "NoSchedule"}]
    assert "nodeSelector" not in platform["exec-evaluate"]

    def tasks(dag):
        for name, task in dag["tasks"].items():
            yield name, task
            sub = spec["components"][task["componentRef"]["name"]]
            if "dag" in sub:
                yield from tasks(sub["dag"])

    all_tasks = dict(tasks(spec["root"]["dag"]))
    cached = {name: t.get("cachingOptions", {}).get("enableCache", False) for name, t in all_tasks.items()}
    assert cached["repurpose"] and cached["evaluate"] and cached["evaluate-2"]
    # the gate's reference, the registry's production version, changes between runs with the same inputs
    assert not cached["gate"] and not cached["train"] and not cached["register"] and not cached["cleanup"]
    (branch,) = [t for t in all_tasks.values() if "condition" in t.get("triggerPolicy", {})]
    assert branch["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    assert list(spec["components"][branch["componentRef"]["name"]]["dag"]["tasks"]) == ["register"]
    assert all_tasks["cleanup"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert all_tasks["cleanup"]["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"


def test_stage_params_order_and_job_names():
    p, combined = stage_params("params.yaml", ["train.epochs=7", "train.max_steps=3"],
                               {"train.epochs": 2.5, "gate.floors": {"i2t_R@1": 0.9}, "train.data": ""})
    assert p.train.epochs == 2.5 and p.train.max_steps == 3  # component parameters win over overrides
    assert p.gate.floors["i2t_R@1"] == 0.9 and p.gate.floors["object_f1"] == 0.3  # merged into the file's
    assert p.train.data == "data/pairs"  # "" keeps the file's value
    assert combined[-2:] == ["train.epochs=2.5", 'gate.floors={"i2t_R@1": 0.9}']
    with pytest.raises(ConfigError, match="train.epochs"):
        stage_params("params.yaml", [], {"train.epochs": "many"})
    name = job_name("4f1c2b7e-0000-4000-8000-000000000001")
    assert name == job_name("4f1c2b7e-0000-4000-8000-000000000001") != job_name("another-run")
    assert stage_params("params.yaml", [], {"launch.name": name})[0].launch.name == name  # a valid job name
    assert store_uri("minio://mlpipeline/v2/artifacts/x") == "s3://mlpipeline/v2/artifacts/x"
    assert field_overrides({"a.b": None, "a.c": 0}) == ["a.c=0"]


def test_log_metrics_keeps_finite_numbers():
    metrics = dsl.Metrics(name="metrics", uri="unused")
    logged = log_metrics(metrics, {"i2t_R@1": 0.5, "steps": 3, "nan": float("nan"), "ok": True, "name": "x"})
    assert logged == {"i2t_R@1": 0.5, "steps": 3.0, "ok": 1.0} == metrics.metadata


def _artifact(cls, path: Path, **metadata):
    path.mkdir(parents=True, exist_ok=True)
    return cls(name=path.name, uri=str(path), metadata=metadata)


def test_train_component_creates_follows_and_collects_the_pytorchjob(kube_api, params, tmp_path):
    """cluster mode: the job gets the image, shape, pairs and checkpoint URIs; the model it wrote is fetched."""
    from components.cleanup import cleanup
    from components.train import train

    params_file = "params.yaml"  # the job reads the params file from the image: a path inside the project
    overrides = [f"launch.kubeconfig={kube_api.kubeconfig}", "launch.poll_seconds=1"]
    run_id = "run-0001"
    checkpoints = tmp_path / "store" / job_name(run_id)
    make_adapter(params).save_pretrained(checkpoints / "model")  # what the job leaves at its checkpoint URI
    pairs = _artifact(dsl.Dataset, tmp_path / "pairs")
    model = _artifact(dsl.Model, tmp_path / "model")
    kube_api.script = [("Created", "created"), ("Succeeded", "done")]
    train(pairs=pairs, base_model="s3://models/base", train_mode="cluster",
          run_id=run_id, checkpoint_root=str(tmp_path / "store"), alpha_lm=1.0, alpha_con=5.0, temperature=0.1,
          epochs=2.0, max_steps=0, image=IMAGE, nodes=2, gpus_per_node=4, params_file=str(params_file),
          overrides=overrides, s3_endpoint="", model=model)

    job = kube_api.objects[("pytorchjobs", "cafe", job_name(run_id))]
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["image"] == IMAGE
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    argv = master["command"] + master.get("args", [])
    assert "--nproc-per-node=4" in argv
    job_cfg = parse_overrides([argv[i + 1] for i, a in enumerate(argv) if a == "-s"])  # what `cafe train` gets
    assert job_cfg["train"]["data"] == pairs.uri  # the shards folder
    assert job_cfg["train"]["checkpoint_store"] == str(checkpoints)
    assert job_cfg["train"]["base_model"] == "s3://models/base"
    assert job_cfg["train"]["objective"] == {"alpha_lm": 1.0, "alpha_con": 5.0, "temperature": 0.1}
    assert job_cfg["train"]["epochs"] == 2.0 and "launch" not in job_cfg
    assert (Path(model.path) / "config.json").is_file()
    assert model.metadata["checkpoint_uri"] == str(checkpoints)
    assert model.metadata["data_uri"] == pairs.uri
    assert model.metadata["job"] == {"kind": "pytorchjob", "namespace": "cafe", "name": job_name(run_id)}

    # the exit handler leaves a succeeded run's job alone and deletes a failed run's
    cleanup(status=dsl.PipelineTaskFinalStatus(state="SUCCEEDED", pipeline_job_resource_name="r", pipeline_task_name="t",
                                               error_code=None, error_message=None),
            train_mode="cluster", run_id=run_id, params_file=str(params_file), overrides=overrides)
    assert ("pytorchjobs", "cafe", job_name(run_id)) in kube_api.objects
    cleanup(status=dsl.PipelineTaskFinalStatus(state="FAILED", pipeline_job_resource_name="r", pipeline_task_name="t",
                                               error_code=1, error_message="evaluate failed"),
            train_mode="cluster", run_id=run_id, params_file=str(params_file), overrides=overrides)
    assert ("pytorchjobs", "cafe", job_name(run_id)) not in kube_api.objects


def test_train_component_fails_when_the_job_fails(kube_api, tmp_path):
    from components.train import train

    params_file = "params.yaml"
    kube_api.script = [("Failed", "worker-0 OOMKilled")]
    with pytest.raises(RuntimeError, match="did not succeed"):
        train(pairs=_artifact(dsl.Dataset, tmp_path / "pairs"), base_model=str(tmp_path),
              train_mode="cluster", run_id="run-2", checkpoint_root=str(tmp_path / "store"), alpha_lm=1.0,
              alpha_con=10.0, temperature=0.05, epochs=1.0, max_steps=0, image=IMAGE, nodes=1, gpus_per_node=1,
              params_file=str(params_file), overrides=[f"launch.kubeconfig={kube_api.kubeconfig}"],
              s3_endpoint="", model=_artifact(dsl.Model, tmp_path / "model"))


class _KfpApi(BaseHTTPRequestHandler):
    """Just enough of the KFP v2beta1 REST API for kfp.Client to create an experiment and a run."""

    requests: list = []

    def log_message(self, *args):
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, None))
        self._send({"multi_user": False} if "healthz" in self.path else {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if self.path.endswith("/experiments"):
            self._send({"experiment_id": "exp-1", "display_name": body["display_name"]})
        else:
            self._send({"run_id": "run-42", "display_name": body["display_name"], "experiment_id": "exp-1"})


def test_submit_sends_the_compiled_pipeline_and_arguments():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _KfpApi.requests = []
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        result = CliRunner().invoke(app, ["pipeline", "submit", "--host", host, "--image", IMAGE, "--run-name", "r1",
                                          "--arg", "epochs=2", "--arg", "gate_floors={i2t_R@1: 0.4}"])
        assert result.exit_code == 0, result.output
        assert "run-42" in result.stdout
        posts = {path.rsplit("/", 1)[-1]: body for method, path, body in _KfpApi.requests if method == "POST"}
        assert posts["experiments"]["display_name"] == "cafe"
        run = posts["runs"]
        assert run["display_name"] == "r1" and run["experiment_id"] == "exp-1"
        assert run["runtime_config"]["parameters"] == {"epochs": 2, "gate_floors": {"i2t_R@1": 0.4}}
        sent = run["pipeline_spec"]  # the IR and, beside it, the Kubernetes platform config (secrets)
        images = {e["container"]["image"] for e in sent["pipeline_spec"]["deploymentSpec"]["executors"].values()
                  if "container" in e}
        assert images == {IMAGE}
        assert "secretAsEnv" in sent["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
            "exec-train"]

        bad = CliRunner().invoke(app, ["pipeline", "submit", "--host", host, "--arg", "epoch=2"])
        assert bad.exit_code == 2 and "unknown pipeline parameter" in bad.output
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_run_needs_local_and_existing_inputs(tmp_path):
    assert CliRunner().invoke(app, ["pipeline", "run"]).exit_code == 2
    result = CliRunner().invoke(app, ["pipeline", "run", "--local", "--arg", f"data_uri={tmp_path}", "--arg",
                                      f"eval_data_uri={tmp_path}", "--arg", f"base_model={tmp_path}/missing"])
    # the whole message on one line, however long the path and however narrow the terminal (CI: 80 columns)
    assert result.exit_code == 2 and (f"error: base_model {tmp_path}/missing does not exist; on the embedded default "
                                      "run `cafe synth` and `cafe pretrain` first (or `make demo`), or pass "
                                      "--arg base_model=...\n") in result.output
    missing = CliRunner().invoke(app, ["pipeline", "compile", "--pipeline", "nosuch", "-o", str(tmp_path / "x.yaml")])
    assert missing.exit_code == 2 and "pipelines/nosuch.py" in missing.output


def _tiny_params_file(params, tmp_path: Path) -> Path:
    """The tiny world and SMALL model of conftest, a few steps, a cheap evaluation, an easy gate."""
    base = tmp_path / "base"
    make_adapter(params).save_pretrained(base)
    params.repurpose.image_root = str(Path(params.synth.out) / "train")
    params.train.base_model = str(base)
    params.train.max_steps, params.train.batch_size = 4, 16
    params.evaluate.parts = ["retrieval", "geometry", "captions"]
    params.evaluate.max_items = {"captions": 8}
    params.evaluate.max_new_tokens = 8
    params.evaluate.cache_dir = ""
    params.gate.floors, params.gate.max_regression = {"i2t_R@1": 0.0}, {"i2t_R@1": 1.0}
    params.gate.resamples, params.gate.geometry_resamples = 50, 10
    params.registry.store = str(tmp_path / "registry")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


@pytest.mark.slow
def test_local_run_registers_when_the_gate_passes_and_not_when_it_fails(params, tmp_path):
    from cafe.registry import Registry

    params_file = _tiny_params_file(params, tmp_path)
    common = ["pipeline", "run", "--local", "-p", str(params_file), "--arg", f"checkpoint_root={tmp_path}/ckpt"]

    passed = CliRunner().invoke(app, common + ["--pipeline-root", str(tmp_path / "root-pass")])
    assert passed.exit_code == 0, passed.output
    registry = Registry(tmp_path / "registry")
    (record,) = registry.list("cafe")
    assert record["gate"]["passed"] and registry.aliases("cafe") == {"candidate": 1}
    assert "per_item.npz" in record["files"]
    assert record["parent"] == params.train.base_model
    from cafe.data.repurpose import repurpose  # the same data repurposed outside the pipeline (as `dvc repro` does)
    from cafe.data.shards import read_data_version

    repurpose(params.repurpose)
    assert record["data_version"] == read_data_version(params.repurpose.out)
    run_dir = next((tmp_path / "root-pass").iterdir())
    html = (run_dir / "evaluate-2" / "report_html").read_text()
    assert "<html" in html.lower() and "i2t_R@1" in html
    assert "| i2t_R@1 |" in (run_dir / "evaluate-2" / "report_md").read_text()
    assert "Gate: passed" in (run_dir / "gate" / "report_md").read_text()
    assert f"# cafe v{record['version']}" in (run_dir / "register" / "model_card").read_text()
    pulled = registry.pull("cafe", "candidate", tmp_path / "pulled")
    assert (pulled / "config.json").is_file()

    failed = CliRunner().invoke(app, common + ["--pipeline-root", str(tmp_path / "root-fail"),
                                               "--arg", "gate_floors={i2t_R@1: 1.01}"])
    assert failed.exit_code == 0, failed.output  # a failed gate is a result, not an error
    assert len(registry.list("cafe")) == 1  # nothing new registered
    run_dir = next((tmp_path / "root-fail").iterdir())
    assert "Gate: FAILED" in (run_dir / "gate" / "report_md").read_text()
    assert not (run_dir / "register").exists()


def test_errors_are_printed_whole_at_80_columns(tmp_path, monkeypatch):
    """A long message (a deep path, brackets that rich would read as markup) comes out as one line."""
    monkeypatch.setenv("COLUMNS", "80")
    deep = tmp_path.joinpath(*[f"level-{i}-of-a-long-temporary-path" for i in range(4)])
    result = CliRunner().invoke(app, ["pipeline", "run", "--local", "--arg", f"data_uri={deep}", "--arg", "epoch=[1]"])
    assert result.exit_code == 2
    assert ("error: unknown pipeline parameter(s) ['epoch']; known: [" in result.output
            and "'train_mode']\n" in result.output), result.output
    bad = CliRunner().invoke(app, ["pipeline", "run", "--local", "--arg", f"data_uri={deep}"])
    assert f"error: data_uri {deep} does not exist; on the embedded default run" in bad.output, bad.output
