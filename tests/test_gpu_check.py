"""benchmarks/gpu_check.py on a machine without CUDA: says so, measures nothing, exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *extra], env=env, capture_output=True,
                          text=True, timeout=900)
    return proc, json.loads(out.read_text())


def test_without_cuda_it_says_so_and_measures_nothing(tmp_path):
    proc, result = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA" in proc.stdout
    assert result["cuda"] is False and "no CUDA" in result["message"]
    assert not {"exactness", "steps", "embedding_throughput", "auto_processor"} & result.keys()  # nothing pretended


@pytest.mark.slow
def test_cpu_dry_run_runs_every_section(tmp_path):
    """The sections' code on CPU at tiny sizes (the float mask, not FlexAttention): no section errors."""
    proc, result = _run(tmp_path, "--cpu-dry-run", "--budget-s", "100000")
    assert proc.returncode == 0, proc.stderr
    assert result["dry_run"] is True and result["device"] == "cpu"
    for name in ("exactness", "steps", "embedding_throughput", "auto_processor"):
        assert "error" not in result[name] if isinstance(result[name], dict) else True, result[name]
    assert all(r["ok"] and r["family"] in ("llava_onevision", "qwen2_vl") for r in result["exactness"])
    auto = result["auto_processor"]
    assert auto["saved_processor_class"] == "LlavaOnevisionProcessor"
    try:
        import torchvision  # noqa: F401
    except ImportError:  # here: AutoProcessor must fail loudly, never hand back a text-only processor
        assert "torchvision" in auto["load_error"].lower() and auto["ok"] is False, auto
    else:
        assert auto["ok"], auto
    modes = {r["mode"] for r in result["steps"]["rows"]}
    assert modes == {"language_only", "three_pass", "shared_prefix_per_loss", "shared_prefix_global",
                     "shared_prefix_balanced"}
