"""Stage `synth`: the shapes world (instruction data and the held-out evaluation sets)."""

from __future__ import annotations

from cafe.config import SynthConfig
from cafe.data import shapes


def synth(cfg: SynthConfig) -> dict:
    """Generate the world under ``cfg.out``; returns the counts of what was written."""
    return shapes.generate(cfg)
