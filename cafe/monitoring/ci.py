"""CI-triggered retraining: submit the compiled training pipeline to a KFP endpoint, wait for it, and write the
outcome (run state, the version it registered with its metrics and gate result) as Markdown for the job
summary. Used by ``.github/workflows/retrain.yml``:

    python -m cafe.monitoring.ci --host $KFP_HOST --package training.yaml --commit $GITHUB_SHA \
        --summary "$GITHUB_STEP_SUMMARY"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HEADLINE = ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "object_f1", "pope_avg_f1", "modality_gap")


def submit_and_wait(host: str, package: str, arguments: dict, timeout_s: int, token: str | None = None,
                    experiment: str = "cafe-ci") -> dict:
    import kfp

    client = kfp.Client(host=host, existing_token=token or None)
    run = client.create_run_from_pipeline_package(package, arguments=arguments, experiment_name=experiment)
    done = client.wait_for_run_completion(run.run_id, timeout=timeout_s)
    return {"run_id": run.run_id, "state": str(getattr(done, "state", "UNKNOWN")), "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}


def summary_markdown(run: dict, record: dict | None, commit: str) -> str:
    """The job summary: the run, and the registered version of this commit (or why there is none)."""
    lines = [f"## Retraining for `{commit[:12]}`", "", f"- KFP run: [{run['run_id']}]({run['url']}), state **{run['state']}**"]
    if record is None or not str(record.get("code_version", "")).startswith(commit):
        lines += ["- No version was registered from this commit: the gate failed or the run did not finish."]
        return "\n".join(lines) + "\n"
    gate = record.get("gate") or {}
    lines += [f"- Registered **{record['name']} v{record['version']}** (data `{record.get('data_version', '')[:12]}`)",
              f"- Gate: **{'passed' if gate.get('passed') else 'FAILED'}**", "", "| metric | value |", "|---|---:|"]
    metrics = record.get("metrics") or {}
    for key in HEADLINE:
        if isinstance(metrics.get(key), (int, float)):
            lines.append(f"| {key} | {metrics[key]:.4f} |")
    failed = [c for c in gate.get("checks", []) if isinstance(c, dict) and not c.get("passed", True)]
    if failed:
        lines += ["", "Failed checks:", *[f"- `{json.dumps(c, sort_keys=True)}`" for c in failed]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="submit the training pipeline, wait, write the job summary")
    ap.add_argument("--host", required=True)
    ap.add_argument("--package", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--summary", default=os.environ.get("GITHUB_STEP_SUMMARY", ""))
    ap.add_argument("--timeout", type=int, default=6 * 3600)
    ap.add_argument("--registry", default="", help="registry store URI (default: params.yaml's registry.store)")
    ap.add_argument("-p", "--params", default="params.yaml")
    args = ap.parse_args(argv)
    from cafe.config import load_params
    from cafe.registry import Registry, RegistryError

    p = load_params(args.params)
    run = submit_and_wait(args.host, args.package, {}, args.timeout, os.environ.get("KFP_TOKEN"))
    try:
        record = Registry(args.registry or p.registry.store).show(p.registry.name, "latest")
    except (RegistryError, FileNotFoundError, OSError):
        record = None
    text = summary_markdown(run, record, args.commit)
    if args.summary:
        with open(args.summary, "a") as fh:
            fh.write(text)
    sys.stdout.write(text)
    ok = "SUCCEEDED" in run["state"].upper() and record is not None and (record.get("gate") or {}).get("passed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
