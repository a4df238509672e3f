"""`cafe mine`: hard negatives for the training pairs (optional, between repurpose and train)."""

from __future__ import annotations

from typing import Optional

import typer

from cafe.cli.options import ParamsOpt, SetOpt, console, failures, out as stdout, params as load, quiet_libraries


def mine(params: str = ParamsOpt, set: Optional[list[str]] = SetOpt,
         model: Optional[str] = typer.Option(None, "--model", "-m", help="a model folder or a registry version/alias "
                                             "(default: mine.model)"),
         data: Optional[str] = typer.Option(None, "--data", help="pairs folder (default: mine.data)"),
         out: Optional[str] = typer.Option(None, "--out", "-o", help="output folder (default: mine.out)"),
         source: Optional[str] = typer.Option(None, "--source", help="model, attribute_swaps (rule-made caption "
                                              "swaps, no model) or both (default: mine.source)"),
         json_out: bool = typer.Option(False, "--json", help="print the summary as JSON instead of a table")) -> None:
    """Embed the pairs with a model, pick mine.k hard negatives per pair in each direction from the nearest
    neighbours after the false-negative rules (or make them by swapping attributes in the captions:
    --source attribute_swaps), and write them as versioned shards beside the pairs."""
    import json

    from cafe.mining.run import print_summary
    from cafe.registry import RegistryError
    from cafe.stages.mine import mine as run

    quiet_libraries()
    p = load(params, set)
    with failures(FileNotFoundError, ValueError, RegistryError, ImportError, label="mine failed"):
        summary = run(p, model=model, data=data, out=out, source=source)
    if json_out:
        stdout.print_json(json.dumps(summary))
    else:
        print_summary(summary, out or p.mine.out, console)
