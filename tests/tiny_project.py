"""A project folder for whole-pipeline tests: the code (cafe/, components/, pipelines/, dvc.yaml) and
tests/params_tiny.yaml as its params.yaml, run by subprocesses with this interpreter's `cafe` on the PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cafe.config import load_params, save_params

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def project(path: Path, dvc: bool = False) -> Path:
    """A copy of the code with the tiny params; ``dvc``: also a git + DVC workspace with dvc.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    for folder in ("cafe", "components", "pipelines"):
        shutil.copytree(ROOT / folder, path / folder, ignore=IGNORE)
    # every section written out: DVC reads the sections its stages name from params.yaml
    save_params(load_params(ROOT / "tests" / "params_tiny.yaml"), path / "params.yaml")
    if dvc:
        shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
        subprocess.run(["git", "init", "-q"], cwd=path, check=True)
        run(path, sys.executable, "-m", "dvc", "init", "-q")
        shutil.copy(ROOT / ".dvc" / "config", path / ".dvc" / "config")
    return path


def env(path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1",
            "CAFE_CODE_VERSION": "test-commit", "COLUMNS": "80",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(path: Path, *argv: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    """A command in ``path``; with ``check`` a non-zero exit fails with the end of its output."""
    proc = subprocess.run(list(argv), cwd=path, env=env(path), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(argv)} -> {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def cafe(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(path, sys.executable, "-m", "cafe", *args, check=check)
