"""Stage `promote`: point a registry alias (the serving alias ``serve.ref``, production by default) at a
version; the previous target stays in the alias's history for a rollback."""

from __future__ import annotations

from cafe.config import Params
from cafe.registry import Registry


def promote(p: Params, version: str | int, alias: str | None = None) -> dict:
    """Move ``alias`` (default ``serve.ref``) of ``registry.name`` to ``version``; returns the alias entry."""
    return Registry(p.registry.store).promote(p.registry.name, version, alias or p.serve.ref)
