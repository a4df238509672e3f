"""The main job: the training pipeline itself (`dvc repro` of dvc.yaml) on the embedded default, then what a
passing gate leads to — promotion to the serving alias, a serving smoke test, and one monitoring pass over a
generated traffic window. Prints the base vs CAFe table, the gate's verdict with its intervals, the registered
version and the monitor's decision; the exit code is non-zero when the gate fails or a stage fails.

Why `dvc repro` and not KFP's local runner: on a workstation the pipeline is run through DVC (it has every
stage from the shapes world to the registration, caches each by its declared inputs — the base is built once —
and is what `git pull && dvc repro` re-runs after a data or parameter change); the Kubeflow pipeline runs the
same stage functions from its components, and tests/test_orchestrators.py checks both register the same
version. See docs/pipeline.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from cafe.config import load_params
from cafe.evaluation.gate import print_gate
from cafe.evaluation.report import write_report
from cafe.report import markdown_table, print_monitor_summary, print_table
from cafe.stages.monitor import monitor
from cafe.stages.promote import promote
from cafe.stages.smoke import smoke

METRICS = Path("metrics")
WORK = Path("runs/demo")  # the serving log, gallery index and monitor output of the demo
TRAFFIC = WORK / "traffic"  # a fresh window each run: only the demo's own requests


def repro(console: Console) -> int:
    """`dvc repro` here (its stages run the `cafe` command of this interpreter's environment)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1"}
    console.print("[bold]training pipeline[/bold]: dvc repro (synth -> repurpose -> pretrain (cached) -> train -> "
                  "evaluate base / CAFe -> gate -> register)")
    return subprocess.run([sys.executable, "-m", "dvc", "repro"], env=env).returncode


def run(console: Console, params_file: str = "params.yaml", traffic_requests: int = 120) -> int:
    """The whole flow in the current directory (a DVC workspace); returns the exit code."""
    start = time.time()
    p = load_params(params_file)
    code = repro(console)
    gate_file = METRICS / "gate" / "gate.json"
    if not gate_file.is_file() or (code != 0 and gate_file.stat().st_mtime < start):
        console.print(f"[red]the pipeline failed before the gate[/red] (dvc repro exit {code})")
        return code or 1

    runs = {name: json.loads((METRICS / folder / "metrics.json").read_text())
            for name, folder in (("base", "base"), ("CAFe", "cafe"))}
    print_table(runs, "base model vs CAFe fine-tuned (held-out shapes world)", console)
    Path("reports").mkdir(exist_ok=True)
    Path("reports/demo.md").write_text("# base vs CAFe\n\n" + markdown_table(runs))
    write_report({"base": METRICS / "base", "CAFe": METRICS / "cafe"}, "reports", "base model vs CAFe fine-tuned")
    gate = json.loads(gate_file.read_text())
    print_gate(gate, console)
    verdict = "passed" if gate["passed"] else f"FAILED ({', '.join(gate['summary']['failed_checks'])})"
    console.print(f"gate {verdict} against {gate.get('reference')}")
    if not gate["passed"]:
        console.print("not registered: the gate failed (report in reports/report.html)")
        return 1
    if code != 0:
        console.print(f"[red]dvc repro failed after the gate[/red] (exit {code})")
        return code

    record = json.loads((METRICS / "register" / "record.json").read_text())
    version = f"{record['name']} v{record['version']}"
    console.print(f"registered {version} (data {record['data_version'][:12]}, code {record['code_version'][:12]}, "
                  f"{len(record['files'])} files, monitor reference included)")
    promote(p, record["version"], p.serve.ref)
    console.print(f"promoted {version} to {p.serve.ref}")

    shutil.rmtree(TRAFFIC, ignore_errors=True)
    stores = [f"serve.traffic_store={TRAFFIC}", f"monitor.traffic_store={TRAFFIC}",
              f"serve.index_store={WORK / 'indexes'}"]
    served = smoke(params_file, stores, p.serve.model_name, p.serve.gallery, traffic_requests,
                   log=WORK / "serve.log")
    console.print(f"served {served['version']} on 127.0.0.1 (pid {served['pid']}, stopped): embedding dim "
                  f"{served['embedding_dim']}, caption {served['caption']!r}; traffic window of {served['searches']} "
                  f"searches, {served['images']} images, {served['feedback']} with feedback")
    p = load_params(params_file, stores)
    summary, _ = monitor(p, out=str(WORK / "monitor"))
    print_monitor_summary(summary, console)
    console.print(f"monitor decision for {version}: [bold]{summary['decision']}[/bold]  "
                  f"(total {time.time() - start:.0f}s; report in reports/report.html, monitor in runs/demo/monitor/)")
    return 0
