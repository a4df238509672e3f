"""The loop closes whoever runs the pipeline: the CLI stage by stage, `dvc repro`, and the Kubeflow pipeline on
KFP's local runner register, for the same config and seed, versions with the same files (model, card, metrics,
per-item results, gate, params, monitor reference), the same lineage and the same weights, and `cafe monitor`
can watch each of them."""

from __future__ import annotations

import shutil
import sys

import pytest

from cafe.monitoring.reference import fetch_reference
from cafe.registry import Registry
from tiny_project import cafe, project, run

pytestmark = pytest.mark.slow

LINEAGE = ("data_version", "code_version", "parent")
EXPECTED = {"MODEL_CARD.md", "metrics.json", "per_item.npz", "gate.json", "params.yaml", "monitor/reference.json",
            "monitor/reference.npz", "config.json"}


def _weights(record: dict) -> dict:
    return {rel: f["sha256"] for rel, f in record["files"].items() if rel.endswith((".safetensors", ".bin"))}


def test_cli_dvc_and_kfp_register_the_same_version(tmp_path):
    cli = project(tmp_path / "cli")
    for args in (["synth"], ["repurpose"], ["pretrain"], ["train", "--no-resume"],
                 ["evaluate", "-m", "models/base/model", "-o", "metrics/base"],
                 ["evaluate", "-m", "runs/cafe/model", "-o", "metrics/cafe", "--compare", "base=metrics/base"],
                 ["gate", "--metrics", "metrics/cafe/metrics.json", "--reference", "metrics/base/metrics.json",
                  "--out", "metrics/gate"],
                 ["register", "-m", "runs/cafe/model", "--metrics", "metrics/cafe/metrics.json", "--gate",
                  "metrics/gate/gate.json", "--data-version", "data/pairs"]):
        cafe(cli, *args)

    dvc = project(tmp_path / "dvc", dvc=True)
    run(dvc, sys.executable, "-m", "dvc", "repro")

    kfp = project(tmp_path / "kfp")  # the pipeline starts from the world and the base, as on a cluster
    shutil.copytree(cli / "data" / "shapes", kfp / "data" / "shapes")
    shutil.copytree(cli / "models", kfp / "models")
    cafe(kfp, "pipeline", "run", "--local", "--pipeline-root", "kfp-root", "--arg", "checkpoint_root=runs/ckpt")

    records = {}
    for name, root in (("cli", cli), ("dvc", dvc), ("kfp", kfp)):
        registry = Registry(root / "registry")
        (records[name],) = registry.list("cafe")
        meta, arrays, _ = fetch_reference(registry, "cafe", "candidate")  # what `cafe monitor` reads
        assert meta["validation"]["images"] == 30 and arrays["image_embeddings"].shape[0] == 30
    files = {name: set(r["files"]) for name, r in records.items()}
    assert files["cli"] == files["dvc"] == files["kfp"], files
    assert EXPECTED <= files["cli"]
    for field in LINEAGE:
        assert records["cli"][field] == records["dvc"][field] == records["kfp"][field], field
    assert records["cli"]["code_version"] == "test-commit" and records["cli"]["parent"] == "models/base/model"
    weights = {name: _weights(r) for name, r in records.items()}
    assert weights["cli"] and weights["cli"] == weights["dvc"] == weights["kfp"], weights
    assert all(r["gate"]["passed"] for r in records.values())

    # the monitor watches the KFP-registered version (a window without traffic: judged "not enough" but run)
    watched = cafe(kfp, "monitor", "--no-probe", "-s", "monitor.ref=candidate")
    assert "registered without a monitor reference" not in watched.stdout + watched.stderr
    assert "monitor:" in watched.stdout
