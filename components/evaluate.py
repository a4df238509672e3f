from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Model, Output


def evaluate(model: Input[Model], eval_data_uri: str, params_file: str, overrides: list, s3_endpoint: str,
             evaluation: Output[Artifact], metrics: Output[Metrics], report_html: Output[HTML],
             report_md: Output[Markdown], reference: Input[Artifact] = None):
    """The evaluation suite on ``model`` -> metrics.json + per-item results (``evaluation``), every number in
    the run's metrics tab, and the report (compared with ``reference``, an earlier evaluation) as HTML and
    Markdown."""
    import json
    from pathlib import Path

    from cafe.evaluation.evaluate import evaluate as run
    from cafe.models import load_adapter
    from cafe.pipeline_io import copy_file, localize, log_metrics, stage_params, use_endpoint

    use_endpoint(s3_endpoint)
    data = localize(eval_data_uri, Path(evaluation.path).parent / "eval-data")
    p, _ = stage_params(params_file, overrides, {"evaluate.data": str(data), "evaluate.report": True})
    compare = {"base": reference.path} if reference is not None else {}
    values = run(load_adapter(model.path, p.prompts, p.model, fresh_tuning=False), p.evaluate, p.prompts,
                 evaluation.path, model_path=model.uri, compare=compare)
    log_metrics(metrics, values)
    out = Path(evaluation.path)
    copy_file(out / "report.html", report_html)
    copy_file(out / "report.md", report_md)
    evaluation.metadata.update({"model": model.uri, "reference": reference.uri if reference is not None else None,
                                "parts": list(p.evaluate.parts)})
    print(json.dumps(values))
