from kfp.dsl import Artifact, Input, Markdown, Metrics, Output


def gate(evaluation: Input[Artifact], reference: Input[Artifact], gate_floors: dict, gate_max_regression: dict,
         registry_store: str, model_name: str, s3_endpoint: str, params_file: str, overrides: list,
         result: Output[Artifact], metrics: Output[Metrics], report_md: Output[Markdown]) -> bool:
    """The gate stage (against the registry's production version once there is one, else the base model's
    evaluation ``reference``) -> gate.json; returns whether every check passed (the pipeline registers only then)."""
    from pathlib import Path

    from cafe.evaluation.report import gate_markdown
    from cafe.pipeline_io import stage_params, use_endpoint
    from cafe.stages.gate import gate as run

    use_endpoint(s3_endpoint)
    p, _ = stage_params(params_file, overrides, {"gate.floors": gate_floors or None,
                                                 "gate.max_regression": gate_max_regression or None,
                                                 "registry.store": registry_store, "registry.name": model_name})
    outcome = run(p, evaluation.path, result.path, base=reference.path)
    Path(report_md.path).write_text(gate_markdown(outcome))
    metrics.log_metric("gate_passed", float(outcome["passed"]))
    metrics.log_metric("failed_checks", float(outcome["summary"]["failed"]))
    result.metadata.update({"passed": outcome["passed"], "failed_checks": outcome["summary"]["failed_checks"],
                            "reference": outcome["reference"]})
    print(f"gate {'passed' if outcome['passed'] else 'FAILED'}: {outcome['summary']}")
    return bool(outcome["passed"])
