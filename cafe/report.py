"""Comparison tables: models side by side on every metric, printed with rich and written as Markdown."""

from __future__ import annotations

import json
from pathlib import Path

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
    table = Table(title=title)
    table.add_column("metric")
    for name in runs:
        table.add_column(name, justify="right")
    table.add_column("change", justify="right")
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
