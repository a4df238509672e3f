from kfp.dsl import Artifact, Input, Markdown, Metrics, Output


def gate(evaluation: Input[Artifact], reference: Input[Artifact], gate_floors: dict, gate_max_regression: dict,
         registry_store: str, model_name: str, s3_endpoint: str, params_file: str, overrides: list,
         result: Output[Artifact], metrics: Output[Metrics], report_md: Output[Markdown]) -> bool:
    """Floors and allowed regressions, with bootstrap intervals, against the registry's production version
    once there is one, else against the base model's evaluation (``reference``) -> gate.json; returns
    whether every check passed (the pipeline registers only then)."""
    from pathlib import Path

    from cafe.evaluation.gate import load_evaluation, production_reference, run_gate, write_gate
    from cafe.evaluation.report import gate_markdown
    from cafe.pipeline_io import stage_params, use_endpoint

    use_endpoint(s3_endpoint)
    p, _ = stage_params(params_file, overrides, {"gate.floors": gate_floors or None,
                                                 "gate.max_regression": gate_max_regression or None,
                                                 "registry.store": registry_store, "registry.name": model_name})
    found = (production_reference(p.registry.store, p.registry.name, p.gate.reference_alias,
                                  Path(result.path) / "reference") if p.gate.reference_alias else None)
    ref_path, ref_label = found or (Path(reference.path), "the base model's evaluation")
    values, per_item = load_evaluation(evaluation.path)
    ref_values, ref_items = load_evaluation(ref_path)
    outcome = run_gate(values, ref_values, p.gate, per_item=per_item, reference_per_item=ref_items)
    outcome["reference"] = ref_label
    write_gate(outcome, result.path)
    Path(report_md.path).write_text(gate_markdown(outcome))
    metrics.log_metric("gate_passed", float(outcome["passed"]))
    metrics.log_metric("failed_checks", float(outcome["summary"]["failed"]))
    result.metadata.update({"passed": outcome["passed"], "failed_checks": outcome["summary"]["failed_checks"],
                            "reference": ref_label})
    print(f"gate {'passed' if outcome['passed'] else 'FAILED'}: {outcome['summary']}")
    return bool(outcome["passed"])
