"""Where benchmark results go, and what each result file records besides the numbers.

Every benchmark writes ``docs/results/<name>.json`` by default (committed, so the numbers the docs cite are
in the repository) through :func:`write_result`, which adds the command that produced it, the git commit it
ran at (and whether the working tree had other changes), the date and the machine.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("docs") / "results"  # relative to the repository root


def default_out(name: str) -> str:
    """The default ``--out`` of benchmark ``name``: ``docs/results/<name>.json`` under the repository."""
    return str(ROOT / RESULTS / f"{name}.json")


def command() -> str:
    """The command line as it was typed: ``python -m benchmarks.x ...`` or ``python benchmarks/x.py ...``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        head = ["python", "-m", spec.name]
    else:
        script = Path(sys.argv[0]).resolve()
        head = ["python", str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.rstrip("\n") if done.returncode == 0 else None  # not strip(): porcelain lines begin with a space


def provenance() -> dict:
    """Command, commit, uncommitted changes (other than results files), date, machine."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    changed = [line[3:] for line in (status or "").splitlines() if not line[3:].startswith(str(RESULTS))]
    return {"command": command(), "commit": _git("rev-parse", "HEAD"), "uncommitted_changes": changed,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}}


def write_result(out: str | Path, result: dict) -> Path:
    """Write ``result`` with its provenance to ``out`` (atomically: a temporary name, then a rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(out.name + ".tmp")
    fresh = provenance()
    # a resumed sweep passes back what it read from ``out``: its provenance is this run's, and the commits the
    # rows already there were made at are kept
    earlier = set(result.get("earlier_commits", [])) | ({result["commit"]} if result.get("commit") else set())
    earlier.discard(fresh["commit"])
    record = {**result, **fresh, **({"earlier_commits": sorted(earlier)} if earlier else {})}
    staged.write_text(json.dumps(record, indent=1) + "\n")
    staged.replace(out)
    return out
