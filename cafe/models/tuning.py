"""Parameter-efficient CAFe (VladVA's options): LoRA through peft, a learnable soft prompt, and which
parts (vision tower, projector, LLM) train in full.

A model's parameters fall into three parts by name (each family names its vision tower and projector
prefixes; everything else is the LLM). LoRA wraps linear layers of the LLM (and optionally the vision
tower) in place, so ``adapter.model`` stays the transformers model the trainer and the adapter's forward
passes already use; ``adapter.peft`` is the peft wrapper that saves and merges the adapters.

A LoRA checkpoint directory holds the peft adapter (``adapter_config.json``, ``adapter_model.safetensors``),
the parts trained in full (``trained_parts.safetensors``), the soft prompt (``soft_prompt.safetensors``),
the processor, and ``cafe_tuning.json`` naming the base checkpoint. :func:`merge` folds it into a full
checkpoint for serving.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from cafe.config import LoraConfig, ModelConfig, TrainableConfig


class Tunable(Protocol):
    """What this module needs of a model adapter (``cafe.models.adapter.VLMAdapter`` is one); naming the
    protocol rather than the class keeps tuning below the adapter, which calls it."""

    model: Any
    processor: Any
    family: str
    base_path: str | None
    peft: Any
    soft_prompt: SoftPrompt | None
    trainable: dict[str, bool]

    def part_of(self, name: str) -> str: ...

    def soft_prompt_init(self, n: int) -> torch.Tensor: ...


TUNING_FILE = "cafe_tuning.json"
PARTS_FILE = "trained_parts.safetensors"
SOFT_PROMPT_FILE = "soft_prompt.safetensors"
SOFT_PROMPT_MODULE = "cafe_soft_prompt"
PARTS = ("vision_tower", "projector", "llm")


# ----------------------------------------------------------------------------- soft prompt
class SoftPrompt(torch.nn.Module):
    """``n`` learnable vectors that replace the placeholder positions of an embedding instruction.

    The adapter marks those positions (``mask``) for the duration of one forward pass; a forward hook on
    the input embedding writes the k-th vector at each row's k-th marked position. Without a mask (language
    instructions, generation) the hook does nothing.
    """

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.embeddings = torch.nn.Parameter(init.clone())
        self.mask: torch.Tensor | None = None

    @property
    def tokens(self) -> int:
        return self.embeddings.shape[0]

    def hook(self, module, args, output: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or mask.shape != output.shape[:2]:
            return output
        slot = (mask.cumsum(dim=1) - 1).clamp(min=0)
        vectors = self.embeddings.to(output.dtype)[slot]
        return torch.where(mask[..., None], vectors, output)


def attach_soft_prompt(model, init: torch.Tensor) -> SoftPrompt:
    soft = SoftPrompt(init.to(model.get_input_embeddings().weight))
    model.add_module(SOFT_PROMPT_MODULE, soft)
    model.get_input_embeddings().register_forward_hook(soft.hook)
    return soft


# ----------------------------------------------------------------------------- parts and LoRA
def is_lora(name: str) -> bool:
    return ".lora_" in name


def lora_target_pattern(adapter: Tunable, cfg: LoraConfig) -> str:
    """A regex over module names: the configured linear layers inside the LLM (and the vision tower)."""
    targets: list[str] = []
    for name, module in adapter.model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name == "lm_head":
            continue
        part = adapter.part_of(name + ".")
        leaf = name.rsplit(".", 1)[-1]
        if (part == "llm" and leaf in cfg.target_modules) or (
                part == "vision_tower" and cfg.vision and leaf in cfg.vision_target_modules):
            targets.append(name)
    if not targets:
        raise ValueError(f"model.lora.target_modules={cfg.target_modules} match no linear layer of this "
                         f"{type(adapter.model).__name__}; name its q_proj/v_proj-style layers")
    return "|".join(re.escape(t) for t in targets)


def resolve_trainable(cfg: TrainableConfig, lora_parts: set[str]) -> dict[str, bool]:
    """Which parts train in full: the configured flags, ``None`` meaning "unless LoRA is on"."""
    out = {}
    for part in PARTS:
        flag = getattr(cfg, part)
        if flag and part in lora_parts:
            raise ValueError(f"model.trainable.{part}=true but LoRA adapts the {part}: train it in full or with "
                             f"LoRA, not both (set model.trainable.{part}=false, or drop it from model.lora)")
        out[part] = (not lora_parts) if flag is None else bool(flag)
    return out


def apply_trainable(adapter: Tunable, trainable: dict[str, bool]) -> None:
    for name, param in adapter.model.named_parameters():
        if is_lora(name) or name.startswith(SOFT_PROMPT_MODULE + "."):
            param.requires_grad_(True)
        else:
            param.requires_grad_(trainable[adapter.part_of(name)])


def _lora_parts(adapter: Tunable) -> set[str]:
    return {adapter.part_of(n) for n, _ in adapter.model.named_parameters() if is_lora(n)}


def _full_part_state(adapter: Tunable) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in adapter.model.named_parameters()
            if not is_lora(n) and not n.startswith(SOFT_PROMPT_MODULE + ".")
            and adapter.trainable.get(adapter.part_of(n), False)}


# ----------------------------------------------------------------------------- setting up, saving, loading
def setup(adapter: Tunable, cfg: ModelConfig, checkpoint: Path | None, fresh: bool) -> None:
    """Give a loaded adapter its LoRA and soft prompt (from ``checkpoint`` when it holds them, else new ones
    from ``cfg`` when ``fresh``) and mark the trainable parameters."""
    from peft import PeftModel, get_peft_model
    from peft import LoraConfig as PeftLoraConfig

    model = adapter.model
    if checkpoint is not None and (checkpoint / "adapter_config.json").is_file():
        adapter.peft = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
        if (checkpoint / PARTS_FILE).is_file():
            _load_named(model, load_file(str(checkpoint / PARTS_FILE)), checkpoint / PARTS_FILE)
    elif fresh and cfg.lora.enabled:
        lora = cfg.lora
        adapter.peft = get_peft_model(model, PeftLoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora_target_pattern(adapter, lora), bias="none"))
    if adapter.peft is not None:
        assert adapter.peft.base_model.model is model  # peft wrapped the layers in place

    soft_file = checkpoint / SOFT_PROMPT_FILE if checkpoint is not None else None
    if soft_file is not None and soft_file.is_file():
        adapter.soft_prompt = attach_soft_prompt(model, load_file(str(soft_file))["embeddings"])
    elif fresh and cfg.soft_prompt.tokens > 0:
        adapter.soft_prompt = attach_soft_prompt(model, adapter.soft_prompt_init(cfg.soft_prompt.tokens))

    saved = json.loads((checkpoint / TUNING_FILE).read_text()) if checkpoint and (checkpoint / TUNING_FILE).is_file() else {}
    adapter.trainable = resolve_trainable(cfg.trainable, _lora_parts(adapter)) if fresh else saved.get(
        "trainable", resolve_trainable(TrainableConfig(), _lora_parts(adapter)))
    apply_trainable(adapter, adapter.trainable)
    if cfg.gradient_checkpointing and not adapter.trainable["llm"]:
        model.enable_input_require_grads()


def _load_named(model, state: dict[str, torch.Tensor], source: Path) -> None:
    params = dict(model.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise ValueError(f"{source}: tensors {missing[:3]}... are not parameters of this model")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def save(adapter: Tunable, path: Path) -> None:
    """LoRA adapter + fully trained parts + soft prompt, or the full model + soft prompt; then the processor."""
    path.mkdir(parents=True, exist_ok=True)
    if adapter.peft is not None:
        if adapter.base_path is None:
            raise ValueError("a LoRA adapter names its base checkpoint: load the base with from_pretrained "
                             "(or save it first) before adding LoRA")
        adapter.peft.save_pretrained(str(path))
        parts = _full_part_state(adapter)
        if parts:
            save_file(parts, str(path / PARTS_FILE))
    else:
        state = {k: v for k, v in adapter.model.state_dict().items() if not k.startswith(SOFT_PROMPT_MODULE + ".")}
        adapter.model.save_pretrained(str(path), state_dict=state, safe_serialization=True)
    if adapter.soft_prompt is not None:
        save_file({"embeddings": adapter.soft_prompt.embeddings.detach().contiguous()}, str(path / SOFT_PROMPT_FILE))
    if adapter.peft is not None or adapter.soft_prompt is not None:
        (path / TUNING_FILE).write_text(json.dumps({
            "family": adapter.family, "base_model": adapter.base_path if adapter.peft is not None else None,
            "trainable": adapter.trainable,
            "soft_prompt_tokens": adapter.soft_prompt.tokens if adapter.soft_prompt is not None else 0,
        }, indent=1))
    adapter.processor.save_pretrained(str(path))


def base_of(path: Path) -> str | None:
    """The base checkpoint a LoRA directory was trained from (``None`` for a full checkpoint)."""
    if not (path / "adapter_config.json").is_file():
        return None
    if not (path / TUNING_FILE).is_file():
        raise FileNotFoundError(f"{path}: a peft adapter without {TUNING_FILE}; it was not saved by cafe, so its "
                                "base checkpoint is unknown")
    return json.loads((path / TUNING_FILE).read_text())["base_model"]


def merge(adapter: Tunable, out: str | Path) -> Path:
    """Fold the LoRA weights into the base weights and save a full checkpoint (soft prompt kept alongside)."""
    if adapter.peft is not None:
        adapter.model = adapter.peft.merge_and_unload()
        adapter.peft = None
    out = Path(out)
    save(adapter, out)
    return out
