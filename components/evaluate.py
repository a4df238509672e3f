from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Model, Output


def evaluate(model: Input[Model], eval_data_uri: str, params_file: str, overrides: list, s3_endpoint: str,
             evaluation: Output[Artifact], metrics: Output[Metrics], report_html: Output[HTML],
             report_md: Output[Markdown], reference: Input[Artifact] = None):
    """The evaluate stage on ``model`` -> metrics.json + per_item.npz (``evaluation``), the numbers in the run's
    metrics tab, and the report (compared with ``reference``, an earlier evaluation) as HTML and Markdown."""
    from pathlib import Path

    from cafe.pipeline_io import copy_file, log_metrics, stage_params, use_endpoint
    from cafe.stages.evaluate import evaluate as run

    use_endpoint(s3_endpoint)
    p, _ = stage_params(params_file, overrides, {"evaluate.report": True})
    compare = {"base": reference.path} if reference is not None else {}
    log_metrics(metrics, run(p, model.path, evaluation.path, compare, data=eval_data_uri, model_label=model.uri))
    copy_file(Path(evaluation.path) / "report.html", report_html)
    copy_file(Path(evaluation.path) / "report.md", report_md)
    evaluation.metadata.update({"model": model.uri, "reference": reference.uri if reference is not None else None,
                                "parts": list(p.evaluate.parts)})
