"""Model families. Adding one: a module with a :class:`~cafe.models.adapter.VLMAdapter` subclass that names
its model and processor classes, its vision tower and projector prefixes and its tiny from-config builder,
and one line in ``FAMILIES`` (see docs/models.md)."""

from __future__ import annotations

from pathlib import Path

from cafe.config import ModelConfig, PromptConfig, TinyModelConfig
from cafe.models import tuning
from cafe.models.adapter import VLMAdapter
from cafe.models.llava import LlavaAdapter
from cafe.models.llava_onevision import LlavaOnevisionAdapter
from cafe.models.qwen2_vl import Qwen2VLAdapter

FAMILIES: dict[str, type[VLMAdapter]] = {
    "llava_onevision": LlavaOnevisionAdapter,
    "qwen2_vl": Qwen2VLAdapter,
    "llava": LlavaAdapter,
}


def family_class(name: str) -> type[VLMAdapter]:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"model.family={name!r} is not supported; choose one of {sorted(FAMILIES)}") from None


def load_adapter(path: str | Path, prompts: PromptConfig, model_cfg: ModelConfig,
                 fresh_tuning: bool = True) -> VLMAdapter:
    """Load a full or LoRA checkpoint (local directory or hub id) with the adapter of the configured family.

    ``fresh_tuning=False`` loads only what the checkpoint holds (for evaluating a plain base model while
    ``model.lora`` / ``model.soft_prompt`` are configured for a fine-tuning run)."""
    family = family_class(model_cfg.family)
    local = Path(path)
    if local.exists() and not ((local / "config.json").is_file() or (local / "adapter_config.json").is_file()):
        raise FileNotFoundError(f"{path}: a directory without config.json (or a LoRA adapter_config.json) "
                                "is not a model checkpoint")
    return family.from_pretrained(path, prompts, model_cfg, fresh_tuning=fresh_tuning)


def build_tiny(corpus: list[str], image_size: int, tiny: TinyModelConfig, prompts: PromptConfig,
               model_cfg: ModelConfig, seed: int = 0) -> VLMAdapter:
    """A randomly initialised tiny model of the configured family (no LoRA or soft prompt: a base)."""
    return family_class(model_cfg.family).build_tiny(corpus, image_size, tiny, prompts, model_cfg, seed=seed)


def merge(path: str | Path, out: str | Path, prompts: PromptConfig, model_cfg: ModelConfig) -> Path:
    """A LoRA checkpoint -> a full checkpoint with the adapters folded in (soft prompt kept), for serving."""
    return tuning.merge(load_adapter(path, prompts, model_cfg, fresh_tuning=False), out)
