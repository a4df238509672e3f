"""`cafe synth` and `cafe repurpose`: the shapes world and the training shards."""

from __future__ import annotations

import time
from typing import Optional

import typer

from cafe.cli.options import ParamsOpt, SetOpt, console, failures, params as load


def synth(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Generate the shapes world: instruction data and held-out evaluation sets."""
    from cafe.stages.synth import synth as run

    p = load(params, set)
    start = time.perf_counter()
    counts = run(p.synth)
    console.print(f"shapes world -> {p.synth.out} in {time.perf_counter() - start:.1f}s: {counts}")


def repurpose(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt,
              source: Optional[str] = typer.Option(None, "--source", help="one instruction folder (local or s3://) "
                                                   "instead of repurpose.input / mixture")) -> None:
    """Instruction data (a mixture of JSON/JSONL/Parquet sources) -> Parquet shards of (image, short
    caption, long caption), stats.json, quarantine.jsonl and data_version.json. Exit 1 when the quarantine
    share is above repurpose.max_quarantine_share or the input cannot be read."""
    from cafe.data.repurpose import RepurposeError, print_summary
    from cafe.stages.repurpose import repurpose as run

    p = load(params, set)
    with failures(RepurposeError, FileNotFoundError, label="repurpose failed"):
        stats = run(p.repurpose, source=source)
    print_summary(stats, p.repurpose.out, console)
