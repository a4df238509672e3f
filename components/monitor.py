from kfp.dsl import HTML, Artifact, Dataset, Metrics, Output


def monitor(params_file: str, overrides: list, reference: str, model: str, probe: bool,
            summary: Output[Artifact], report: Output[HTML], pairs: Output[Dataset], metrics: Output[Metrics]) -> str:
    """`cafe monitor` as a step: the traffic window against the served version's reference -> summary.json,
    Evidently HTML, the window's feedback pairs (an instruction folder: the training pipeline's
    ``data_uri``), and the decision (ok / warn / retrain) as the step's output."""
    import json
    import shutil
    from pathlib import Path

    from cafe.config import load_params
    from cafe.monitoring.run import run_monitor

    p = load_params(params_file, overrides)
    out = Path(summary.path).parent / "monitor"
    result, counts = run_monitor(p, model or None, reference or None, str(out), pairs.path, probe)
    Path(summary.path).write_text(json.dumps(result, indent=1, default=str))
    html = out / "report.html"
    if html.is_file():
        shutil.copyfile(html, report.path)
    else:
        Path(report.path).write_text("<html><body><p>window too small for an Evidently report</p></body></html>")
    fb = result["signals"]["feedback"]
    metrics.log_metric("feedback_recall", float(fb.get("recall", float("nan"))))
    metrics.log_metric("feedback_n", float(fb["n"]))
    summary.metadata.update({"decision": result["decision"], "reasons": result["reasons"]})
    pairs.metadata.update(counts or {})
    print(f"decision {result['decision']}: {result['reasons'] or result['not_judged']}")
    return result["decision"]
