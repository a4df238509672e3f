"""What every command module shares: the common options, the config loader, and the two consoles.

Messages are printed with soft wrap: rich would otherwise break a sentence at the terminal width (80 columns in
CI and under typer's CliRunner), e.g. inside a long temporary path. Errors go to stderr, results to stdout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.text import Text

from cafe.config import ConfigError, Params, load_params

console = Console(stderr=True, soft_wrap=True)  # progress, notes, errors
out = Console(soft_wrap=True)  # results (tables, JSON)

ParamsOpt = typer.Option("params.yaml", "--params", "-p", help="params file (missing: defaults)")
SetOpt = typer.Option(None, "--set", "-s", help="override, e.g. -s train.max_steps=100 (repeatable)")
ModelOpt = typer.Option(None, "--model", "-m", help="model directory (default: the registry's serve.ref / monitor.ref)")
StoreOpt = typer.Option(None, "--store", help="registry store URI (default: registry.store)")
NameOpt = typer.Option(None, "--name", "-n", help="model name (default: registry.name)")


def error(message: str, label: str = "error") -> None:
    """``label: message`` on stderr, the label in red, the message unwrapped and never read as markup."""
    text = Text(f"{label}", style="red")
    text.append(f": {message}")
    console.print(text, soft_wrap=True)


def fail(message: str, code: int = 2, label: str = "error") -> NoReturn:
    """Print the error and end the command with ``code``."""
    error(message, label)
    raise typer.Exit(code)


@contextmanager
def failures(*kinds: type[BaseException], code: int = 1, label: str = "error") -> Iterator[None]:
    """Errors of these kinds end the command with their message and ``code``."""
    try:
        yield
    except kinds as err:
        fail(str(err), code, label)


def params(path: str, overrides: Optional[list[str]]) -> Params:
    """params.yaml (+ overrides); a bad file or override ends the command with exit 2."""
    with failures(ConfigError, code=2, label="config error"):
        return load_params(path, overrides)


def quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def named_dirs(items: Optional[list[str]]) -> dict[str, str]:
    """``["base=metrics/base", "metrics/other"]`` -> ``{"base": "metrics/base", "other": "metrics/other"}``."""
    found = {}
    for item in items or []:
        name, _, path = item.partition("=")
        found[name if path else Path(name).name] = path or name
    return found
