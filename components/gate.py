from kfp.dsl import Artifact, Input, Markdown, Metrics, Output


def gate(evaluation: Input[Artifact], reference: Input[Artifact], gate_floors: dict, gate_max_regression: dict,
         params_file: str, overrides: list, result: Output[Artifact], metrics: Output[Metrics],
         report_md: Output[Markdown]) -> bool:
    """Floors and allowed regressions against the reference evaluation, with bootstrap intervals ->
    gate.json; returns whether every check passed (the pipeline registers only then)."""
    from pathlib import Path

    from cafe.evaluation.gate import load_evaluation, run_gate, write_gate
    from cafe.evaluation.report import gate_markdown
    from cafe.pipeline_io import stage_params

    p, _ = stage_params(params_file, overrides, {"gate.floors": gate_floors or None,
                                                 "gate.max_regression": gate_max_regression or None})
    values, per_item = load_evaluation(evaluation.path)
    ref_values, ref_items = load_evaluation(reference.path)
    outcome = run_gate(values, ref_values, p.gate, per_item=per_item, reference_per_item=ref_items)
    write_gate(outcome, result.path)
    Path(report_md.path).write_text(gate_markdown(outcome))
    metrics.log_metric("gate_passed", float(outcome["passed"]))
    metrics.log_metric("failed_checks", float(outcome["summary"]["failed"]))
    result.metadata.update({"passed": outcome["passed"], "failed_checks": outcome["summary"]["failed_checks"]})
    print(f"gate {'passed' if outcome['passed'] else 'FAILED'}: {outcome['summary']}")
    return bool(outcome["passed"])
