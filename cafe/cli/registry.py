"""`cafe register` and `cafe registry list|show|promote|rollback|pull|gc`: the model registry from the shell.

Store and model name default to params.yaml's ``registry:`` section; ``--store`` takes a folder or
``s3://bucket/prefix`` (endpoint and credentials from CAFE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Optional

import typer
from rich.table import Table

from cafe.cli.options import (NameOpt, ParamsOpt, SetOpt, StoreOpt, console, failures, out, params as load,
                              quiet_libraries)

registry_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="Registered model versions: list, show, promote, rollback, pull, gc.")


@contextmanager
def _errors():
    """Registry and store failures end the command with their message and exit code 1."""
    from cafe.registry import RegistryError
    from cafe.storage import StoreError

    with failures(RegistryError, StoreError, FileNotFoundError, FileExistsError, code=1):
        yield


def _open(params: str, overrides: Optional[list[str]], store: Optional[str], name: Optional[str]):
    from cafe.registry import Registry

    p = load(params, overrides)
    with _errors():
        return Registry(store or p.registry.store, progress=True), name or p.registry.name, p


def _short(text: Optional[str], n: int = 12) -> str:
    return "-" if not text else (text if len(text) <= n + 6 else text[:n] + ("-dirty" if text.endswith("-dirty") else ""))


def _metric(record: dict, key: str) -> str:
    value = record.get("metrics", {}).get(key)
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def register(model: str = typer.Option(..., "--model", "-m", help="saved model directory (config.json, weights, "
                                                                  "processor)"),
             metrics: str = typer.Option(..., "--metrics", help="metrics.json from `cafe evaluate` (per_item.npz "
                                                               "beside it is stored too)"),
             gate: str = typer.Option(..., "--gate", help="gate.json from `cafe gate`"),
             data_version: Optional[str] = typer.Option(None, "--data-version",
                                                        help="shards hash, data_version.json or pairs directory "
                                                             "(default: train.data's data_version.json)"),
             parent: Optional[str] = typer.Option(None, "--parent", help="parent model: NAME:REF or a path/hub id "
                                                                         "(default: train.base_model)"),
             training_params: Optional[str] = typer.Option(None, "--training-params",
                                                           help="training config (default: the model's params.yaml)"),
             alias: Optional[str] = typer.Option(None, "--alias", help="alias to point at the new version "
                                                                       "(default: registry.alias_on_register)"),
             allow_failed_gate: bool = typer.Option(False, "--allow-failed-gate"),
             record_out: Optional[str] = typer.Option(None, "--record-out", help="also write the version record here"),
             reference: Optional[str] = typer.Option(None, "--reference", help="monitor reference folder "
                                                     "(`cafe monitor reference`); default: built now from the model"),
             with_reference: bool = typer.Option(True, "--with-reference/--no-reference",
                                                 help="store a monitor reference (without one `cafe monitor` "
                                                      "cannot watch the version)"),
             store: Optional[str] = StoreOpt, name: Optional[str] = NameOpt,
             params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Register a model version: files + model card + metrics + per-item results + gate + lineage + monitor
    reference, visible only when complete."""
    from cafe.stages.register import register as run

    quiet_libraries()
    p = load(params, set)
    with _errors():
        record = run(p, model, metrics, gate, data_version=data_version, parent=parent, params=training_params,
                     alias=alias, reference=reference, with_reference=with_reference,
                     allow_failed_gate=allow_failed_gate, store=store, name=name, record_out=record_out)
    table = Table(title=f"registered {record['name']} v{record['version']} in {store or p.registry.store}")
    table.add_column("field")
    table.add_column("value")
    for field in ("version", "data_version", "code_version", "parent", "upload_id"):
        table.add_row(field, str(record[field]))
    table.add_row("files", f"{len(record['files'])} ({record['total_bytes'] / 1e6:.2f} MB)")
    table.add_row("gate", "passed" if record["gate"].get("passed") else "FAILED")
    out.print(table)


@registry_app.command("list")
def list_versions(store: Optional[str] = StoreOpt, name: Optional[str] = NameOpt,
                  params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Every version of a model with lineage, headline metrics and aliases."""
    reg, name, _ = _open(params, set, store, name)
    with _errors():
        records, aliases = reg.list(name), reg.aliases(name)
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    table = Table(title=f"{name} in {reg.store.uri}")
    for column in ("version", "created", "data", "code", "parent", "gate", "i2t R@1", "t2i R@1", "aliases"):
        table.add_column(column)
    for r in records:
        table.add_row(f"v{r['version']}", r["created_at"], _short(r["data_version"]), _short(r["code_version"], 8),
                      str(r.get("parent") or "-"), "pass" if r["gate"].get("passed") else "FAIL",
                      _metric(r, "i2t_R@1"), _metric(r, "t2i_R@1"), ", ".join(sorted(by_version.get(r["version"], []))))
    out.print(table)
    if not records:
        console.print(f"no versions of {name!r} yet")


@registry_app.command()
def show(ref: str = typer.Argument("latest", help="version (3 or v3), 'latest' or an alias"),
         as_json: bool = typer.Option(False, "--json", help="print the whole record as JSON"),
         store: Optional[str] = StoreOpt, name: Optional[str] = NameOpt,
         params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """One version's record: lineage, gate, metrics, files."""
    reg, name, _ = _open(params, set, store, name)
    with _errors():
        record = reg.show(name, ref)
    if as_json:
        out.print_json(json.dumps(record))
        return
    table = Table(title=f"{name} v{record['version']}", show_header=False)
    for field in ("created_at", "created_by", "data_version", "code_version", "parent", "params_sha256",
                  "upload_id", "aliases"):
        table.add_row(field, str(record.get(field)))
    table.add_row("gate", json.dumps(record["gate"]))
    for key, value in sorted(record["metrics"].items()):
        table.add_row(f"metric {key}", f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("files", f"{len(record['files'])} files, {record['total_bytes']} bytes (sha256 each)")
    out.print(table)


@registry_app.command()
def promote(version: str = typer.Argument(..., help="version (3 or v3), 'latest' or an alias"),
            alias: str = typer.Argument("production", help="alias to move, e.g. candidate or production"),
            store: Optional[str] = StoreOpt, name: Optional[str] = NameOpt,
            params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Point an alias at a version (the previous target stays in its history)."""
    reg, name, _ = _open(params, set, store, name)
    with _errors():
        result = reg.promote(name, version, alias)
    out.print(f"{name}: {alias} -> v{result['version']}")


@registry_app.command()
def rollback(alias: str = typer.Argument("production"),
             store: Optional[str] = StoreOpt, name: Optional[str] = NameOpt,
             params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Point an alias back at the version it had before."""
    reg, name, _ = _open(params, set, store, name)
    with _errors():
        result = reg.rollback(name, alias)
    out.print(f"{name}: {alias} v{result['from']} -> v{result['version']}")


@registry_app.command()
def pull(ref: str = typer.Argument("production", help="version, 'latest' or an alias"),
         dest: str = typer.Argument(..., help="new directory for the model"),
         store: Optional[str] = StoreOpt, name: Optional[str] = NameOpt,
         params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Download a version, verifying every file's sha256; the directory loads with from_pretrained."""
    reg, name, _ = _open(params, set, store, name)
    with _errors():
        path = reg.pull(name, ref, dest)
    out.print(f"{name} {ref} -> {path}")


@registry_app.command()
def gc(min_age_hours: float = typer.Option(24.0, help="only uploads older than this (younger may be running)"),
       store: Optional[str] = StoreOpt, name: Optional[str] = NameOpt,
       params: str = ParamsOpt, set: Optional[list[str]] = SetOpt) -> None:
    """Delete the files of uploads that never became a version (killed or failed registrations)."""
    reg, name, _ = _open(params, set, store, name)
    with _errors():
        removed = reg.gc(name, min_age_hours * 3600)
    out.print(f"{name}: removed {len(removed)} unreferenced uploads {removed}")
