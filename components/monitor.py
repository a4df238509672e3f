from kfp.dsl import HTML, Artifact, Dataset, Metrics, Output


def monitor(params_file: str, overrides: list, reference: str, model: str, probe: bool,
            summary: Output[Artifact], report: Output[HTML], pairs: Output[Dataset], metrics: Output[Metrics]) -> str:
    """The monitor stage: the traffic window against the served version's reference -> summary.json, Evidently
    HTML, the window's feedback pairs (an instruction folder: the training pipeline's ``data_uri``), and the
    decision (ok / warn / retrain) as the step's output."""
    import json
    from pathlib import Path

    from cafe.pipeline_io import copy_file_or_note, log_metrics
    from cafe.config import load_params
    from cafe.stages.monitor import monitor as run

    out = Path(summary.path).parent / "monitor"
    result, counts = run(load_params(params_file, overrides), model or None, reference or None, str(out),
                         pairs.path, probe)
    Path(summary.path).write_text(json.dumps(result, indent=1, default=str))
    copy_file_or_note(out / "report.html", report, "window too small for an Evidently report")
    fb = result["signals"]["feedback"]
    log_metrics(metrics, {"feedback_recall": fb.get("recall", float("nan")), "feedback_n": fb["n"]})
    summary.metadata.update({"decision": result["decision"], "reasons": result["reasons"]})
    pairs.metadata.update(counts or {})
    print(f"decision {result['decision']}: {result['reasons'] or result['not_judged']}")
    return result["decision"]
