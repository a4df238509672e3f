"""The README and the docs site cannot rot: the site builds with ``mkdocs build --strict`` (every page in the
nav, every link and anchor resolves), every repository path the text names exists, nothing points outside
the repository, the layout page matches the tree, and benchmark results say how they were made."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TOP_FILES = {"params.yaml", "dvc.yaml", "Makefile", "pyproject.toml", "constraints-cpu.txt", "mkdocs.yml", "README.md"}
TOP_DIRS = ("cafe", "tests", "benchmarks", "configs", "manifests", "components", "pipelines", "docker", "docs",
            ".github", ".ci", ".dvc")


def _texts() -> dict[Path, str]:
    files = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return {f: f.read_text() for f in files}


def _prose(text: str) -> str:
    """The text without fenced code blocks (shell sessions and listings name outputs, not repository files)."""
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250, "README.md is over 250 lines: move the detail into a page under docs/"
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "layout" / "index.html").is_file()


def test_nothing_refers_outside_the_repository():
    for path, text in _texts().items():
        for target in re.findall(r"\]\(([^)#\s]+)", text):  # markdown links, relative to their page
            if "://" not in target and not target.startswith("mailto:"):
                resolved = (path.parent / target).resolve()
                assert resolved.is_relative_to(ROOT), f"{path.relative_to(ROOT)} links outside the repository: {target}"
        for token in re.findall(r"`([^`\s]+)`", text):
            assert not token.startswith("../"), f"{path.relative_to(ROOT)} names a path outside the repository: {token}"


def _repo_paths(text: str) -> set[str]:
    """Back-quoted tokens that name a file or folder of the repository (placeholders and globs left out)."""
    found = set()
    for token in re.findall(r"`([^`\s]+)`", _prose(text)):
        token = token.rstrip(".,:;")
        if any(c in token for c in "<>{}*[]$=|…") or "..." in token:
            continue
        if token in TOP_FILES or (token.split("/", 1)[0] in TOP_DIRS and "/" in token):
            found.add(token)
    return found


def test_every_repository_path_named_in_the_docs_exists():
    missing = sorted(f"{path.relative_to(ROOT)}: `{token}`" for path, text in _texts().items()
                     for token in _repo_paths(text) if not (ROOT / token.split("#")[0].split(":")[0]).exists())
    assert not missing, "the docs name paths that do not exist (fix the text or the path):\n  " + "\n  ".join(missing)


def _tree() -> tuple[set[str], set[str]]:
    """The cafe/ packages and modules, and the top-level folders, that layout.md must list."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tree's files are unknown")
    files = [f for f in listed if (ROOT / f).exists()]
    cafe = set()
    for f in files:
        parts = f.split("/")
        if parts[0] == "cafe" and len(parts) == 2 and f.endswith(".py") and parts[1] != "__init__.py":
            cafe.add(f)
        elif parts[0] == "cafe" and len(parts) > 2 and f.endswith(".py"):
            cafe.add(f"cafe/{parts[1]}/")
    top = {f.split("/", 1)[0] + "/" for f in files if "/" in f}
    return cafe, top - {"cafe/"}


def test_layout_page_matches_the_tree():
    text = (DOCS / "layout.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|", text, flags=re.M)
    cafe, top = _tree()
    gone = sorted(p for p in rows if not (ROOT / p).exists())
    unlisted = sorted((cafe | top) - set(rows))
    message = []
    if gone:
        message.append("remove these rows from docs/layout.md (no such path): " + ", ".join(gone))
    if unlisted:
        message.append("add a row to docs/layout.md for each of: " + ", ".join(unlisted)
                       + "  (as  | `PATH` | what it holds |)")
    assert not message, "\n".join(message)


def test_benchmark_results_record_command_and_commit(tmp_path, monkeypatch):
    from benchmarks._results import default_out, write_result

    assert default_out("drift") == str(ROOT / "docs" / "results" / "drift.json")
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # run as a script
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "drift.py"), "--seeds", "2"])
    record = json.loads(write_result(tmp_path / "r.json", {"rows": [1, 2]}).read_text())
    assert record["rows"] == [1, 2] and record["command"] == "python benchmarks/drift.py --seeds 2"
    module = types.SimpleNamespace(__spec__=types.SimpleNamespace(name="benchmarks.tradeoff"))
    monkeypatch.setitem(sys.modules, "__main__", module)  # run with python -m
    monkeypatch.setattr(sys, "argv", ["/somewhere/benchmarks/tradeoff.py", "--steps", "10"])
    assert json.loads(write_result(tmp_path / "r.json", {}).read_text())["command"] == (
        "python -m benchmarks.tradeoff --steps 10")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert record["commit"] == head and isinstance(record["uncommitted_changes"], list)
    # a resumed sweep writes back what it read: the provenance is the new run's, the older commit is kept
    resumed = json.loads(write_result(tmp_path / "r.json", {**record, "commit": "0" * 40, "date": "then"}).read_text())
    assert resumed["commit"] == head and resumed["date"] != "then" and resumed["earlier_commits"] == ["0" * 40]


def test_committed_results_name_their_command_and_commit():
    results = sorted((DOCS / "results").glob("*.json"))
    index = (DOCS / "results" / "index.md").read_text()
    for path in results:
        record = json.loads(path.read_text())
        made = record.get("command", "").startswith("python") and re.fullmatch(r"[0-9a-f]{40}", record.get("commit") or "")
        assert made, f"{path.relative_to(ROOT)} does not say how it was made: write it with benchmarks/_results.write_result"
        assert path.name in index, f"docs/results/index.md does not list {path.name}"


OUTPUT_FIELDS = {"out", "output", "store", "index_store", "traffic_store", "cache_dir"}


def _output_defaults(model, prefix="") -> dict[str, str]:
    from pydantic import BaseModel

    found = {}
    for name, value in model:
        if isinstance(value, BaseModel):
            found |= _output_defaults(value, f"{prefix}{name}.")
        elif name in OUTPUT_FIELDS and isinstance(value, str) and value and "://" not in value:
            found[prefix + name] = value
    return found


def test_every_default_output_folder_is_git_ignored():
    from cafe.config import Params, load_params

    outputs = _output_defaults(Params()) | _output_defaults(load_params(ROOT / "params.yaml"))
    assert {"serve.index_store", "serve.traffic_store", "monitor.out"} <= set(outputs)
    probes = {key: f"{value.rstrip('/')}/some-output" for key, value in outputs.items()}
    done = subprocess.run(["git", "check-ignore", "--no-index", *probes.values()], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed: {done.stderr.strip()}")
    ignored = set(done.stdout.split())
    tracked = sorted(f"{key} = {outputs[key]}" for key, probe in probes.items() if probe not in ignored)
    assert not tracked, "add these default output folders to .gitignore: " + ", ".join(tracked)
