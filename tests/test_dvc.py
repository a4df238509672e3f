"""DVC: dvc.yaml declares every stage with params.yaml; `dvc push`/`dvc pull` through the repository's
MinIO remote work against a real S3 server process; `dvc repro` after a parameter change re-runs only
the stages that depend on it."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cafe.config import Params

REPO = Path(__file__).resolve().parents[1]


def _dvc(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1", **(env or {})})
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def _repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    _dvc(path, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", path / ".dvc" / "config")
    return path


def test_dvc_yaml_declares_every_stage_with_params_metrics_plots_and_outputs():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = spec["stages"]
    assert set(stages) == {"synth", "repurpose", "pretrain", "train", "evaluate_base", "evaluate", "gate", "register"}
    sections = set(Params.model_fields)
    for name, stage in stages.items():
        assert stage["params"] and {key.partition(".")[0] for key in stage["params"]} <= sections, name
        assert stage["cmd"].startswith("bin/cafe "), name
    outs = {next(iter(o)) if isinstance(o, dict) else o for s in stages.values() for o in s.get("outs", [])}
    assert {"data/shapes", "data/pairs/train", "data/pairs/val", "data/pairs/data_version.json",
            "models/base", "runs/cafe"} <= outs  # raw data, shards, checkpoints
    metrics = {next(iter(m)) for s in stages.values() for m in s.get("metrics", [])}
    assert {"data/pairs/metrics.json", "metrics/cafe/metrics.json", "metrics/gate/metrics.json"} <= metrics
    assert spec["plots"]
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert config["core"]["remote"] == "local" and config["core"]["analytics"] == "false"
    minio = config["'remote \"minio\"'"]
    assert minio["url"].startswith("s3://") and minio["endpointurl"].startswith("http")
    assert "/dvc-store/" in (REPO / ".gitignore").read_text().splitlines()


def test_dvc_push_and_pull_through_the_minio_remote_on_a_real_s3_server(tmp_path, s3_server):
    repo = _repo(tmp_path / "repo")
    bucket = s3_server.make_bucket()
    _dvc(repo, "remote", "modify", "minio", "url", f"s3://{bucket}/dvc")
    _dvc(repo, "remote", "modify", "minio", "endpointurl", s3_server.endpoint)
    data = repo / "data" / "pairs"
    data.mkdir(parents=True)
    payload = {f"part-{i:05d}.parquet": os.urandom(2048 + i) for i in range(3)}
    for name, blob in payload.items():
        (data / name).write_bytes(blob)
    _dvc(repo, "add", "-q", "data/pairs")
    _dvc(repo, "push", "-r", "minio")
    stored = [o.object_name for o in s3_server.client().list_objects(bucket, prefix="dvc/", recursive=True)]
    assert len(stored) >= len(payload)

    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(repo, "pull", "-r", "minio")
    assert {p.name: p.read_bytes() for p in data.iterdir()} == payload


def _ran(proc: subprocess.CompletedProcess) -> set[str]:
    text = proc.stdout + proc.stderr
    return {stage for stage in ("synth", "repurpose") if f"Running stage '{stage}'" in text}


@pytest.mark.slow
def test_dvc_repro_after_a_parameter_change_reruns_only_its_dependents(tmp_path):
    repo = _repo(tmp_path / "repo")
    shutil.copytree(REPO / "cafe", repo / "cafe", ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    tiny = {}
    for name in ("synth", "repurpose"):
        tiny[name] = {**stages[name], "cmd": stages[name]["cmd"].replace("bin/cafe ", f"{sys.executable} -m cafe.cli ", 1)}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": tiny}))
    params = {"synth": {"train_images": 12, "retrieval_images": 4, "probe_images": 2, "image_size": 32},
              "repurpose": {"workers": 1, "progress": False, "val_fraction": 0.0}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}

    assert _ran(_dvc(repo, "repro", env=env)) == {"synth", "repurpose"}
    first = json.loads((repo / "data" / "pairs" / "data_version.json").read_text())
    assert first["rows"] == {"train": 12, "val": 0}

    params["repurpose"]["val_fraction"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert _ran(_dvc(repo, "repro", env=env)) == {"repurpose"}
    second = json.loads((repo / "data" / "pairs" / "data_version.json").read_text())
    assert second["rows"]["val"] > 0 and second["sha256"] != first["sha256"]

    assert _ran(_dvc(repo, "repro", env=env)) == set()
    params["synth"]["seed"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert _ran(_dvc(repo, "repro", env=env)) == {"synth", "repurpose"}


def test_training_log_plots_natively_and_metrics_files_hold_numbers_only(tmp_path):
    from cafe.stages.repurpose import _numbers
    from cafe.stages.train import write_plots

    run = tmp_path / "repo" / "runs" / "cafe"
    run.mkdir(parents=True)
    rows = [{"step": s, "loss": 2.0 / s, "loss_lm": 1.0 / s, "loss_con": 1.0 / s, "lr": 0.1, "attempt": 0} for s in (1, 2, 3)]
    rows.insert(2, {"step": 2, "val_loss": 1.5, "val_loss_lm": 0.7})
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.name for p in write_plots(run)] == ["train.csv", "val.csv"]
    assert (run / "plots" / "train.csv").read_text().splitlines()[:2] == ["step,loss,loss_lm,loss_con,lr,attempt",
                                                                          "1,2.0,1.0,1.0,0.1,0"]
    repo = _repo(tmp_path / "repo")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]}))
    shown = json.loads(_dvc(repo, "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown["errors"]
    (plot,) = shown["data"]["runs/cafe/plots/train.csv"]  # DVC reads the CSV itself (no "file type error")
    values = plot["content"]["data"]["values"]
    assert len(values) == 3 * 3 and {v["field"] for v in values} == {"loss", "loss_lm", "loss_con"}

    stats = {"input": 10, "kept": 8, "data_version": "ab" * 32, "sources": {"a": {"kept": 8, "path": "x.json"}},
             "identity": "input 10 == kept 8 + ...", "quarantine_share": 0.0, "ok": True, "reasons": ["x"]}
    assert _numbers(stats) == {"input": 10, "kept": 8, "sources": {"a": {"kept": 8}}, "quarantine_share": 0.0, "ok": 1}


def test_dvc_exp_run_registers_only_when_asked(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cafe.cli import app
    from cafe.registry import Registry

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "metrics.json").write_text(json.dumps({"i2t_R@1": 0.5}))
    (tmp_path / "gate.json").write_text(json.dumps({"passed": True, "checks": []}))
    args = ["register", "-m", "model", "--metrics", "metrics.json", "--gate", "gate.json", "--data-version", "d0",
            "--no-reference", "--record-out", "record.json", "-s", f"registry.store={tmp_path / 'reg'}"]
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-owl")
    skipped = CliRunner().invoke(app, args)
    assert skipped.exit_code == 0 and "DVC experiment sunny-owl: not registered" in skipped.output, skipped.output
    assert json.loads((tmp_path / "record.json").read_text()) == {"registered": False, "experiment": "sunny-owl"}
    assert Registry(tmp_path / "reg").list("cafe") == []
    asked = CliRunner().invoke(app, [*args, "-s", "registry.experiments=true"])
    assert asked.exit_code == 0, asked.output
    assert [r["version"] for r in Registry(tmp_path / "reg").list("cafe")] == [1]


@pytest.mark.parametrize("dvc_file", ["dvc.yaml", "pipelines/mining/dvc.yaml"])
def test_every_parameter_a_stage_declares_is_in_its_params_file(dvc_file):
    """DVC refuses a stage whose declared parameter is missing from the params file ("Parameters 'serve.batch_size'
    are missing from 'params.yaml'"): the main job stopped after the gate for that."""
    root = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((root / dvc_file).read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        for entry in stage.get("params", []):
            files = entry.items() if isinstance(entry, dict) else [("params.yaml", [entry])]
            for file, keys in files:
                path = (root / dvc_file).parent / file
                if not path.is_file():
                    path = root / file
                values = yaml.safe_load(path.read_text())
                for key in keys:
                    node = values
                    for part in key.split("."):
                        node = node.get(part) if isinstance(node, dict) and part in node else KeyError
                        if node is KeyError:
                            missing.append(f"{name}: {key} (in {file})")
                            break
    assert not missing, missing
