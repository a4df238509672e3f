from kfp.dsl import HTML, Artifact, Dataset, Metrics, Output


def monitor(params_file: str, overrides: list, reference: str, model: str, probe: bool,
            decision_page: Output[HTML], evidently_text: Output[HTML], evidently_images: Output[HTML],
            summary: Output[Artifact], pairs: Output[Dataset], metrics: Output[Metrics]) -> str:
    """The monitor stage: the traffic window against the served version's reference -> the decision page
    (decision, reasons, signals; the step's first HTML output), Evidently's reports of the text queries and the
    query images (one HTML output each), summary.json, the window's feedback pairs (an instruction folder: the
    training pipeline's ``data_uri``), and the decision (ok / warn / retrain) as the step's output."""
    import json
    from pathlib import Path

    from cafe.config import load_params
    from cafe.pipeline_io import log_metrics, monitor_outputs
    from cafe.stages.monitor import monitor as run

    out = Path(summary.path).parent / "monitor"
    result, counts = run(load_params(params_file, overrides), model or None, reference or None, str(out),
                         pairs.path, probe)
    Path(summary.path).write_text(json.dumps(result, indent=1, default=str))
    monitor_outputs(result, out, decision_page,
                    {"evidently_text": evidently_text, "evidently_images": evidently_images})
    fb = result["signals"]["feedback"]
    log_metrics(metrics, {"feedback_recall": fb.get("recall", float("nan")), "feedback_n": fb["n"]})
    summary.metadata.update({"decision": result["decision"], "reasons": result["reasons"]})
    pairs.metadata.update(counts or {})
    print(f"decision {result['decision']}: {result['reasons'] or result['not_judged']}")
    return result["decision"]
