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
    """params.yaml (+ overrides); a bad file or override ends the command with exit 2. A missing file is
    said, since the class defaults (the paper's settings) are not the embedded default of params.yaml."""
    if not Path(path).is_file():
        error(f"{path} not found in {Path.cwd()}: using the class defaults (the paper's settings, e.g. 64 px "
              "shapes), not the project's params.yaml; run from the project root or pass -p FILE", label="note")
    with failures(ConfigError, code=2, label="config error"):
        return load_params(path, overrides)


def quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def named_dirs(items: Optional[list[str]]) -> dict[str, str]:
    """Evaluations as ``NAME=PATH`` (or ``PATH``, named after its folder), PATH an evaluation folder or the
    metrics.json in it: ``["base=metrics/base/metrics.json", "metrics/cafe"]`` -> ``{"base": "metrics/base",
    "cafe": "metrics/cafe"}``. A path without metrics.json ends the command with a one-line error."""
    found = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        folder = Path(path if sep else name)
        folder = folder.parent if folder.name == "metrics.json" else folder
        if not (folder / "metrics.json").is_file():
            fail(f"{item}: no metrics.json in {folder}; give NAME=PATH with PATH an evaluation folder "
                 "(`cafe evaluate -o DIR`) or its metrics.json")
        found[name if sep else folder.name] = str(folder)
    return found


def model_path(model: str) -> str:
    """A ``--model`` that is a local folder must hold a saved model; a missing one is an error naming it
    (a hub id, ``org/name`` with no such local folder, is passed on)."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            fail(f"--model {model}: not a saved model (no config.json in the folder)")
        return model
    parts = model.split("/")
    hub_id = len(parts) == 2 and all(parts) and not model.startswith((".", "~")) and not Path(parts[0]).exists()
    if not hub_id:
        fail(f"--model {model}: no such model folder; train it first (`cafe train`, `cafe pretrain`, `dvc repro`) "
             "or pass an existing folder or a hub id")
    return model


@contextmanager
def registry_errors(what: str = "the registry") -> Iterator[None]:
    """Registry and store failures (no such alias, version, store) as one line with what to do."""
    from cafe.registry import RegistryError
    from cafe.storage import StoreError

    try:
        yield
    except (RegistryError, StoreError, FileNotFoundError) as err:
        fail(f"{err} ({what}; promote a version with `cafe registry promote N ALIAS`, or pass --model DIR)", code=1)
