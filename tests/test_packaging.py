"""The wheel as a user gets it: built from the project's files, installed into a fresh venv, and the command
line working outside the checkout (`cafe --version`, `python -m cafe`, `cafe pipeline compile`, which needs
pipelines/ and components/ from the wheel). Files the stores write are readable by others (0644).

The fresh venv does not reinstall the dependencies (torch, kfp, ...): a ``.pth`` file puts this test
environment's site-packages after its own, so ``cafe`` itself comes from the installed wheel only (this
environment's editable ``cafe`` is a finder hook that a ``.pth`` path line does not run)."""

import os
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, cwd, **kw):
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built (PEP 517, setuptools from this environment) from a copy of the project's files."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], ROOT).split("\0")
    src = tmp / "src"
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    # "./src", not "src": pip reads a bare name as a package to download
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "./src"], tmp)
    (found,) = (tmp / "dist").glob("cafe-*.whl")
    return found


def test_the_wheel_carries_what_the_command_line_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in ("cafe/cli/pipeline.py", "cafe/__main__.py", "cafe/project/pipelines/training.py",
                "cafe/project/pipelines/monitoring.py", "cafe/project/components/train.py",
                "cafe/project/components/__init__.py", "cafe/project/configs/deepspeed/zero2.json",
                "cafe/project/configs/cluster/llava-ov-0.5b.yaml", "cafe/project/params.yaml"):
        assert rel in names, rel
    assert any(n.endswith("LICENSE") for n in names)
    assert not any("__pycache__" in n or n.startswith(("tests/", "data/", "runs/")) for n in names)


def test_installed_wheel_compiles_the_pipeline_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    py = venv / "bin" / "python"
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    (site / "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = run([py, "-c", "import cafe; print(cafe.__file__)"], work, env=env).strip()
    assert where.startswith(str(site)), where  # the wheel's cafe, not the checkout's
    assert run([venv / "bin" / "cafe", "--version"], work, env=env).strip() == "cafe 0.1.0"
    assert run([py, "-m", "cafe", "--version"], work, env=env).strip() == "cafe 0.1.0"
    run([venv / "bin" / "cafe", "pipeline", "compile", "-o", "pipeline.yaml"], work, env=env)
    compiled = (work / "pipeline.yaml").read_text()
    assert "pipelineInfo" in compiled and "comp-train" in compiled and "comp-gate" in compiled
    run([venv / "bin" / "cafe", "pipeline", "compile", "--pipeline", "monitoring", "-o", "monitoring.yaml"], work, env=env)
    assert "comp-monitor" in (work / "monitoring.yaml").read_text()


def test_registered_files_and_pulled_models_are_readable_by_others(tmp_path):
    """mkstemp (the stores' atomic writes) makes 0600 files and mkdtemp 0700 folders; both follow the umask."""
    from cafe.registry import Registry
    from cafe.storage.local import DIR_MODE, FILE_MODE
    from tests.test_registry import fake_model, register

    assert FILE_MODE == 0o666 & ~current_umask() and DIR_MODE == 0o777 & ~current_umask()
    reg = Registry(str(tmp_path / "registry"), progress=False)
    register(reg, fake_model(tmp_path / "model", "a"), extra_files={"reports/eval.html": tmp_path / "model" / "config.json"})
    stored = [f for f in (tmp_path / "registry").rglob("*") if f.is_file()]
    assert any(f.name == "eval.html" for f in stored) and any(f.suffix == ".safetensors" for f in stored)
    for f in stored:
        assert stat.S_IMODE(f.stat().st_mode) == FILE_MODE, f
    pulled = reg.pull("m", 1, tmp_path / "pulled")
    assert stat.S_IMODE(pulled.stat().st_mode) == DIR_MODE
    assert all(stat.S_IMODE(f.stat().st_mode) == FILE_MODE for f in pulled.rglob("*") if f.is_file())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
