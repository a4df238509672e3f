"""The `cafe` command as a whole: the entry points, and one-line errors with a hint for the common mistakes
(printed whole at 80 columns, so they are matched whole here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cafe import __version__
from cafe.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(result, text: str) -> None:
    lines = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and lines[0] == text, result.output
    assert "Traceback" not in result.output


def test_version_and_python_dash_m():
    assert CliRunner().invoke(app, ["--version"]).output == f"cafe {__version__}\n"
    proc = subprocess.run([sys.executable, "-m", "cafe", "--version"], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"cafe {__version__}\n", proc.stderr


def test_a_missing_model_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    result = CliRunner().invoke(app, ["evaluate", "-m", "runs/nope/model", "-o", "out"])
    assert result.exit_code == 2
    _one_line_error(result, "error: --model runs/nope/model: no such model folder; train it first (`cafe train`, "
                            "`cafe pretrain`, `dvc repro`) or pass an existing folder or a hub id")
    (tmp_path / "runs" / "empty").mkdir()
    result = CliRunner().invoke(app, ["evaluate", "-m", "runs/empty", "-o", "out"])
    _one_line_error(result, "error: --model runs/empty: not a saved model (no config.json in the folder)")


def test_serving_without_the_alias_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["serve", "-s", f"registry.store={tmp_path / 'reg'}"])
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if x.startswith("error")]
    assert line.endswith(f"(serve.ref production of cafe in {tmp_path / 'reg'}; promote a version with "
                         "`cafe registry promote N ALIAS`, or pass --model DIR)"), result.output
    assert "Traceback" not in result.output


def test_compare_and_report_take_the_same_name_path_arguments(tmp_path):
    for name, value in (("base", 0.25), ("cafe", 0.75)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"i2t_R@1": value}))
    forms = [f"base={tmp_path / 'base'}", f"cafe={tmp_path / 'cafe' / 'metrics.json'}"]
    shown = CliRunner().invoke(app, ["compare", *forms])
    assert shown.exit_code == 0 and "+0.500" in shown.output, shown.output
    written = CliRunner().invoke(app, ["report", *forms, "-o", str(tmp_path / "report")])
    assert written.exit_code == 0 and (tmp_path / "report" / "report.md").is_file(), written.output
    bad = CliRunner().invoke(app, ["compare", f"x={tmp_path / 'nothing'}"])
    assert bad.exit_code == 2
    _one_line_error(bad, f"error: x={tmp_path / 'nothing'}: no metrics.json in {tmp_path / 'nothing'}; give "
                         "NAME=PATH with PATH an evaluation folder (`cafe evaluate -o DIR`) or its metrics.json")
