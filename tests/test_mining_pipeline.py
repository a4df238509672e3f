"""The mine stage in the orchestrators: a DVC pipeline of its own (`dvc repro` unchanged), the Kubeflow mine step
behind the run parameter mine_negatives, and the registered model's lineage naming the negatives' version."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from kfp import dsl
from typer.testing import CliRunner

from cafe.cli import app
from cafe.config import Params
from cafe.mining.shards import is_negatives, read_version
from tests import tiny_project
from tests.conftest import make_adapter, pairs

REPO = Path(__file__).resolve().parents[1]
MINING = REPO / "pipelines" / "mining" / "dvc.yaml"


def _stages(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["stages"]


def test_mining_stages_are_a_pipeline_of_their_own():
    root, mining = _stages(REPO / "dvc.yaml"), _stages(MINING)
    assert set(mining) == {"mine", "mine_swaps", "train_mined", "evaluate_mined"} and not set(mining) & set(root)
    assert not any("negatives" in str(stage) for stage in root.values())  # the default never mines
    sections = set(Params.model_fields)
    for name, stage in mining.items():
        assert stage["cmd"].startswith("bin/cafe ") and stage["wdir"] == "../..", name
        assert {key.partition(".")[0] for key in stage["params"]} <= sections, name
    assert "runs/cafe/model" in mining["mine"]["deps"] and mining["mine"]["outs"] == ["data/negatives"]
    assert "data/negatives" in mining["train_mined"]["deps"]
    # the attribute-swap arm needs no model, only the pairs
    assert "--source attribute_swaps" in mining["mine_swaps"]["cmd"] and mining["mine_swaps"]["outs"] == [
        "data/negatives-swaps"] and not any("runs/" in d for d in mining["mine_swaps"]["deps"])


def test_dvc_repro_runs_the_default_pipeline_and_mining_only_when_named(tmp_path, monkeypatch):
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages

    project = tiny_project.project(tmp_path / "project", dvc=True)
    monkeypatch.chdir(project)  # stage addresses are relative to the working directory
    with Repo(str(project)) as repo:
        repo.index.check_graph()  # both files in one graph: no overlapping outputs, no cycle
        by_file = {s.addressing: s for s in repo.index.stages}
        assert {"pipelines/mining/dvc.yaml:mine", "train"} <= set(by_file)
        # what `dvc repro` collects without a target (dvc.yaml), and with the mining file named
        default = {s.name for s in collect_stages(repo, ["dvc.yaml"])}
        mining = {s.name for s in collect_stages(repo, ["pipelines/mining/dvc.yaml"])}
        upstream = {s.name for s in repo.index.graph.successors(by_file["pipelines/mining/dvc.yaml:mine"])}
    assert default == set(_stages(REPO / "dvc.yaml"))
    assert mining == {"mine", "mine_swaps", "train_mined", "evaluate_mined"}
    assert {"repurpose", "train"} <= upstream  # the negatives come after the round-1 model and the pairs


def test_compiled_pipeline_has_the_optional_mine_step(tmp_path):
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(app, ["pipeline", "compile", "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec = next(yaml.safe_load_all(out.read_text()))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["mine_negatives"]["defaultValue"] is False and inputs["mining_model"]["defaultValue"] == "production"
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    train_inputs = tasks["train"]["inputs"]["artifacts"]
    assert train_inputs["negatives"]["taskOutputArtifact"] == {"outputArtifactKey": "negatives", "producerTask": "mine"}


def _artifact(cls, path: Path, **metadata):
    path.mkdir(parents=True, exist_ok=True)
    return cls(name=path.name, uri=str(path), metadata=metadata)


def test_mine_component_off_leaves_no_negatives_and_on_mines(params, tmp_path, monkeypatch):
    from components.mine import mine

    pairs(params)
    model = tmp_path / "miner"
    make_adapter(params).save_pretrained(model)
    params_file = tmp_path / "params.yaml"
    params.mine.cache_dir, params.mine.candidates, params.mine.k = "", 16, 2
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    data = _artifact(dsl.Dataset, Path(params.train.data))
    off = _artifact(dsl.Dataset, tmp_path / "off")
    mine(pairs=data, mine_negatives=False, mining_model=str(model), registry_store="", model_name="cafe",
         params_file=str(params_file), overrides=[], s3_endpoint="", negatives=off)
    assert off.metadata == {"mined": False} and not is_negatives(off.path)
    on = _artifact(dsl.Dataset, tmp_path / "on")
    mine(pairs=data, mine_negatives=True, mining_model=str(model), registry_store="", model_name="cafe",
         params_file=str(params_file), overrides=[], s3_endpoint="", negatives=on)
    version = read_version(on.path)
    assert on.metadata["mined"] and on.metadata["data_version"] == version["sha256"]
    assert version["model"]["path"] == str(model)

    # the same step makes the attribute-swap arm by config alone, with no model to name
    swaps = _artifact(dsl.Dataset, tmp_path / "swaps")
    mine(pairs=data, mine_negatives=True, mining_model="", registry_store="", model_name="cafe",
         params_file=str(params_file), overrides=["mine.source=attribute_swaps"], s3_endpoint="", negatives=swaps)
    version = read_version(swaps.path)
    assert version["source"] == "attribute_swaps" and version["model"] is None
    assert swaps.metadata["source"] == "attribute_swaps" and swaps.metadata["data_version"] == version["sha256"]
    assert swaps.metadata["kept"]["i2t"] == swaps.metadata["kept"]["t2i"]


def test_mining_model_from_a_registry_alias(params, tmp_path, monkeypatch):
    from cafe.registry import Registry
    from cafe.stages.mine import mine

    monkeypatch.chdir(tmp_path)
    pairs(params)
    model = tmp_path / "model"
    make_adapter(params).save_pretrained(model)
    registry = Registry(str(tmp_path / "registry"))
    registry.register(model, "cafe", metrics={"i2t_R@1": 0.1}, gate={"passed": True, "checks": []},
                      data_version="d" * 64, parent="base", alias="production")
    params.registry.store, params.registry.name = str(tmp_path / "registry"), "cafe"
    params.mine.model, params.mine.out, params.mine.cache_dir = "production", str(tmp_path / "neg"), ""
    params.mine.data = params.train.data
    params.mine.progress = False
    mine(params)
    recorded = read_version(tmp_path / "neg")["model"]
    assert recorded["version"] == "cafe-v1" and recorded["ref"] == "production"
    assert json.loads((tmp_path / "neg" / "mine.json").read_text())["model"] == "production"


def test_cli_prints_what_each_rule_dropped(params, tmp_path):
    pairs(params)
    model = tmp_path / "miner"
    make_adapter(params).save_pretrained(model)
    params.mine.data, params.mine.model, params.mine.out = params.train.data, str(model), str(tmp_path / "neg")
    params.mine.cache_dir, params.mine.progress = "", False
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["mine", "-p", str(params_file), "-s", "mine.k=2"])
    assert result.exit_code == 0, result.output
    for row in ("dropped: caption", "dropped: margin", "kept", "exact search"):
        assert row in result.output
    result = CliRunner().invoke(app, ["mine", "-p", str(params_file), "-m", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "mine failed" in result.output
