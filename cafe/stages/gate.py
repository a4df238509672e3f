"""Stage `gate`: floors and allowed regressions with bootstrap intervals -> gate.json.

The reference is the registry's ``gate.reference_alias`` version (production) once there is one, else the
base model's evaluation: the choice is made here for every orchestrator."""

from __future__ import annotations

from pathlib import Path

from cafe.config import Params
from cafe.evaluation.gate import load_evaluation, production_reference, run_gate, write_gate


def gate(p: Params, evaluation: str | Path, out: str | Path, base: str | Path | None = None,
         production: bool = True) -> dict:
    """Judge the evaluation (a folder or its metrics.json; per_item.npz beside it is used) against the reference
    and write ``out/gate.json``; returns the result with ``reference`` naming what it was compared with.
    Raises FileNotFoundError / ValueError when an evaluation cannot be read."""
    found = None
    if production and p.gate.reference_alias:
        found = production_reference(p.registry.store, p.registry.name, p.gate.reference_alias,
                                     Path(out) / "reference")
    ref_path, ref_label = found or (base, base and f"file {base}")
    values, per_item = load_evaluation(evaluation)
    ref_values, ref_items = load_evaluation(ref_path) if ref_path else (None, None)
    result = run_gate(values, ref_values, p.gate, per_item=per_item, reference_per_item=ref_items)
    result["reference"] = ref_label
    write_gate(result, out)
    return result
