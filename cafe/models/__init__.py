"""Model families. Adding one: a module with a :class:`~cafe.models.adapter.VLMAdapter` subclass that names
its model and processor classes, and one line in ``FAMILIES``."""

from __future__ import annotations

from pathlib import Path

from cafe.config import ModelConfig, PromptConfig
from cafe.models.adapter import VLMAdapter
from cafe.models.llava_onevision import LlavaOnevisionAdapter

FAMILIES: dict[str, type[VLMAdapter]] = {
    "llava_onevision": LlavaOnevisionAdapter,
}


def load_adapter(path: str | Path, prompts: PromptConfig, model_cfg: ModelConfig) -> VLMAdapter:
    """Load a checkpoint (local directory or hub id) with the adapter of the configured family."""
    try:
        family = FAMILIES[model_cfg.family]
    except KeyError:
        raise ValueError(f"model.family={model_cfg.family!r} is not supported; choose one of {sorted(FAMILIES)}") from None
    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{path}: a directory without config.json is not a model checkpoint")
    return family.from_pretrained(path, prompts, model_cfg)
