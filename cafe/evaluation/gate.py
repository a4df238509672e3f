"""`cafe gate`: may this model be registered? Absolute floors per metric and the largest allowed
regression against a reference model (the registry's production model, else the base model), each with
a bootstrap confidence interval so that noise of a small evaluation set is not read as a regression.

Rules (thresholds in ``params.yaml``, section ``gate``):

- floor: the point value must reach the floor (``<=`` for lower-is-better metrics);
- ceiling (``max_value``): the point value must not exceed the ceiling; for lower-is-better metrics such as
  the invalid-answer rates (``pope_invalid_rate``, ``mmstar_invalid_rate``, ``caption_empty_rate``);
- regression: with ``delta`` = value - reference (sign turned for lower-is-better metrics, so a worsening is
  negative), the check fails only when the whole confidence interval of ``delta`` lies below
  ``-max_regression``, i.e. the model is worse by more than allowed beyond the noise. The interval is the
  paired bootstrap when the reference's per-item results cover the same items, else the model's own
  interval shifted by the reference value;
- a metric that is missing or NaN (in the model or the reference) fails its check, with a message.

``gate.json``: ``{"passed": bool, "checks": [{"metric", "kind", "value", "ci", "threshold", "reference",
"delta", "delta_ci", "passed", "message"}], "summary": {...}}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cafe.config import GateConfig
from cafe.evaluation.bootstrap import bootstrap_samples, interval
from cafe.evaluation.per_item import PerItem, lower_is_better


def _bad(value) -> str | None:
    if value is None:
        return "missing"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"not a number ({value!r})"
    if math.isnan(value):
        return "NaN"
    return None


def _check(metric: str, kind: str, value, ci, threshold, passed: bool, message: str, **extra) -> dict:
    return {"metric": metric, "kind": kind, "value": value, "ci": list(ci) if ci else None, "threshold": threshold,
            **extra, "passed": bool(passed), "message": message}


def run_gate(metrics: dict, reference: dict | None, cfg: GateConfig, *, per_item: PerItem | None = None,
             reference_per_item: PerItem | None = None) -> dict:
    """Every configured check with its value, interval, threshold and verdict; ``passed`` only if all pass."""
    samples, ref_samples = ({}, {})
    if per_item is not None:
        samples, ref_samples = bootstrap_samples(per_item, cfg.resamples, cfg.seed, reference_per_item,
                                                 {"geometry": cfg.geometry_resamples})
    cis = {k: interval(v, cfg.confidence) for k, v in samples.items()}

    def lower(metric: str) -> bool:
        return metric in cfg.lower_is_better or metric in cfg.max_value or lower_is_better(metric)

    checks = []
    bounds = [(m, "floor", v) for m, v in cfg.floors.items()] + [(m, "ceiling", v) for m, v in cfg.max_value.items()]
    for metric, kind, bound in bounds:
        value, ci = metrics.get(metric), cis.get(metric)
        problem = _bad(value)
        if problem:
            checks.append(_check(metric, kind, None, None, bound, False, f"{metric} is {problem} in the model's metrics"))
            continue
        at_most = kind == "ceiling" or lower(metric)
        ok = value <= bound if at_most else value >= bound
        checks.append(_check(metric, kind, value, ci, bound, ok,
                             f"{value:.4f} {'<=' if at_most else '>='} {bound} required" + ("" if ci else "; no per-item results, no CI")))

    for metric, allowed in cfg.max_regression.items():
        value = metrics.get(metric)
        if reference is None:
            ok = not cfg.require_reference
            checks.append(_check(metric, "regression", value, cis.get(metric), allowed, ok,
                                 "no reference metrics given" + ("" if ok else " (gate.require_reference is on)")))
            continue
        ref = reference.get(metric)
        problem = _bad(value) or (_bad(ref) and f"{_bad(ref)} in the reference")
        if problem:
            checks.append(_check(metric, "regression", value if not _bad(value) else None, None, allowed, False,
                                 f"{metric} is {problem}", reference=ref if not _bad(ref) else None))
            continue
        sign = -1.0 if lower(metric) else 1.0
        delta = sign * (value - ref)
        if metric in ref_samples and metric in samples:
            delta_ci, how = interval(sign * (samples[metric] - ref_samples[metric]), cfg.confidence), "paired bootstrap"
        elif metric in samples:
            delta_ci, how = interval(sign * (samples[metric] - ref), cfg.confidence), "bootstrap of the model only"
        else:
            delta_ci, how = None, "no per-item results: point estimate"
        upper = delta_ci[1] if delta_ci else delta
        ok = upper >= -allowed
        checks.append(_check(metric, "regression", value, cis.get(metric), allowed, ok,
                             f"change {delta:+.4f}{' (sign turned: lower is better)' if sign < 0 else ''} "
                             f"(CI upper {upper:+.4f}, {how}); a worsening beyond {allowed} fails",
                             reference=ref, delta=delta, delta_ci=list(delta_ci) if delta_ci else None))

    failed = [c["metric"] + f" ({c['kind']})" for c in checks if not c["passed"]]
    return {"passed": not failed, "checks": checks,
            "summary": {"total": len(checks), "failed": len(failed), "failed_checks": failed},
            "confidence": cfg.confidence, "resamples": cfg.resamples,
            "lower_is_better": sorted(m for m in {*metrics, *cfg.floors, *cfg.max_value, *cfg.max_regression} if lower(m)),
            "intervals": {k: list(v) if v else None for k, v in sorted(cis.items())}}


def load_evaluation(metrics_path: str | Path) -> tuple[dict, PerItem | None]:
    """metrics.json and, when it lies next to it, per_item.npz."""
    path = Path(metrics_path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file; run `cafe evaluate` first")
    metrics = json.loads(path.read_text())
    per_item_path = path.parent / "per_item.npz"
    return metrics, PerItem.load(per_item_path) if per_item_path.is_file() else None


def production_reference(store: str, name: str, alias: str, dest: str | Path) -> tuple[Path, str] | None:
    """The registry's ``alias`` version's ``metrics.json`` (and ``per_item.npz`` when it was registered with
    one), downloaded into ``dest``, with a label naming the version; None while no version has that alias,
    so that the gate falls back to the base model. An unreachable registry raises: a gate never passes
    because the production model could not be read."""
    from cafe.registry import Registry, RegistryError

    registry = Registry(store)
    try:
        version = registry.resolve(name, alias)
    except RegistryError:
        return None
    _, files = registry.fetch(name, version, ["metrics.json", "per_item.npz"], dest)
    if "metrics.json" not in files:
        raise ValueError(f"{name} v{version} ({alias}) in {store} has no metrics.json to compare against")
    return files["metrics.json"], f"registry {name} v{version} ({alias})"


def write_gate(result: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gate.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    tmp.replace(out / "gate.json")
    return out / "gate.json"


def print_gate(result: dict, console) -> None:
    """The checks as a table that fits 80 columns (one line per check), then each check's message below it."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"gate: {'passed' if result['passed'] else 'FAILED'}", box=box.SIMPLE_HEAD, padding=(0, 1),
                  pad_edge=False)
    for col in ("metric", "check", "value [95% CI]", "bound", "result"):
        table.add_column(col, justify="right" if col in ("value [95% CI]", "bound") else "left", no_wrap=True)
    for c in result["checks"]:
        ci = c.get("ci")
        value = "—" if c["value"] is None else f"{c['value']:.3f}"
        table.add_row(c["metric"], c["kind"], value + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""),
                      str(c["threshold"]), "[green]pass[/green]" if c["passed"] else "[red]FAIL[/red]")
    console.print(table)
    for c in result["checks"]:
        colour = "green" if c["passed"] else "red"
        console.print(f"[{colour}]{'pass' if c['passed'] else 'FAIL'}[/{colour}] {c['metric']} ({c['kind']}): "
                      f"{c['message']}", markup=True, highlight=False)
