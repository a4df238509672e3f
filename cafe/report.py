"""Tables for the terminal: models side by side on every metric (also as Markdown), and the monitor's
decision with its signals."""

from __future__ import annotations

import json
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

# metrics where lower is better (shown with the arrow turned)
LOWER_IS_BETTER = {"modality_gap", "probe_yes_ratio"}


def comparison(runs: dict[str, dict[str, float]]) -> list[list[str]]:
    """Rows ``[metric, value per run..., change of the last run against the first]``."""
    names = list(runs)
    keys = [k for k in runs[names[0]] if all(k in runs[n] for n in names)]
    rows = []
    for key in keys:
        values = [runs[n][key] for n in names]
        delta = values[-1] - values[0]
        rows.append([key, *(f"{v:.3f}" for v in values), f"{delta:+.3f}"])
    return rows


def print_table(runs: dict[str, dict[str, float]], title: str, console: Console | None = None) -> None:
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)  # runs fit 80 columns with room to spare
    table.add_column("metric", no_wrap=True)
    for name in runs:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("change", justify="right", no_wrap=True)
    for row in comparison(runs):
        table.add_row(*row)
    (console or Console()).print(table)


def markdown_table(runs: dict[str, dict[str, float]]) -> str:
    names = list(runs)
    lines = ["| metric | " + " | ".join(names) + " | change |", "|---|" + "---:|" * (len(names) + 1)]
    lines += ["| " + " | ".join(row) + " |" for row in comparison(runs)]
    return "\n".join(lines) + "\n"


def load_metrics(path: str | Path) -> dict[str, float]:
    return json.loads(Path(path).read_text())


def print_monitor_summary(summary: dict, console: Console) -> None:
    """The monitor's decision and signals as a table."""
    colour = {"ok": "green", "warn": "yellow", "retrain": "red"}[summary["decision"]]
    table = Table(title=f"monitor: [{colour}]{summary['decision']}[/{colour}]  ({summary['window']['records']} records, "
                  f"{summary['window']['feedback']} with feedback)")
    table.add_column("signal")
    table.add_column("value")
    sig = summary["signals"]
    for name, drift in sig["embedding_drift"].items():
        table.add_row(f"{name} drift", f"{drift['score']:.3f} (> {drift['threshold']:.3f}: {drift['drifted']})"
                      if drift.get("judged") else f"not judged (n={drift['n']})")
    top1 = sig["top1_drift"]
    table.add_row("top-1 similarity K-S p", f"{top1['p_value']:.3g}" if top1.get("judged") else f"not judged (n={top1['n']})")
    fb = sig["feedback"]
    table.add_row("feedback R@K / MRR", f"{fb['recall']:.3f} / {fb['mrr']:.3f} (ref {fb['reference']}, n={fb['n']})"
                  if fb.get("n") else "no feedback")
    if sig.get("probe"):
        table.add_row("probe R@K", f"{sig['probe']['recall']:.3f} (ref {sig['probe']['reference']})")
    gap = sig["modality_gap"]
    table.add_row("modality gap", "-" if gap["value"] is None else f"{gap['value']:.3f} (ref {gap['reference']:.3f})")
    table.add_row("NaN / missing embeddings", f"{sig['invalid']['count']} of {sig['invalid']['total']}")
    for reason in summary["reasons"]:
        table.add_row("reason", reason)
    for note in summary["not_judged"]:
        table.add_row("not judged", note)
    console.print(table)
