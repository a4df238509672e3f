"""The embedding contract of a model: how an embedding of it is made (prompts, pooling, normalisation,
dimension, digest of the chat template). It is written next to the weights (``embedding_contract.json``),
copied into the model card and the registry record, and compared by serving with the gallery index it
searches: embeddings made under another contract are not comparable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


CONTRACT_FILE = "embedding_contract.json"
CONTRACT_SCHEMA = "cafe.embedding_contract/1"


class ContractMismatch(ValueError):
    """Two embedding contracts differ (a model and its index, or a model and the prompts it is served with)."""


def contract_of(adapter) -> dict:
    """The contract of an adapter as loaded now (its prompts, padding, soft prompt, model width, template)."""
    template = adapter.processor.chat_template or ""
    text_config = getattr(adapter.model.config, "text_config", adapter.model.config)
    return {
        "schema": CONTRACT_SCHEMA,
        "family": adapter.family,
        "system_prompt": adapter.prompts.system,
        "image_prompt": adapter.prompts.image_embed,
        "text_prompt": adapter.prompts.text_embed,
        "image_input": "user turn: [image, image_prompt]; generation prompt added",
        "text_input": "user turn: text + '\\n' + text_prompt; generation prompt added",
        "soft_prompt_tokens": adapter.soft_prompt.tokens if adapter.soft_prompt is not None else 0,
        "pooling": "last_token",
        "hidden_state": "last layer, after the final norm",
        "padding_side": adapter.model_cfg.embed_padding_side,
        "normalisation": "l2",
        "dim": int(text_config.hidden_size),
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
    }


def contract_digest(contract: dict) -> str:
    return hashlib.sha256(json.dumps(contract, sort_keys=True).encode()).hexdigest()[:16]


def write_contract(adapter, path: str | Path) -> dict:
    contract = contract_of(adapter)
    (Path(path) / CONTRACT_FILE).write_text(json.dumps(contract, indent=1, sort_keys=True) + "\n")
    return contract


def read_contract(path: str | Path) -> dict | None:
    """The contract saved with a model directory, or None for a model saved before contracts existed."""
    file = Path(path) / CONTRACT_FILE
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    if not isinstance(data, dict) or data.get("schema") != CONTRACT_SCHEMA:
        raise ContractMismatch(f"{file}: not a {CONTRACT_SCHEMA} contract")
    return data


def check_contract(expected: dict, actual: dict, what: str, hint: str) -> None:
    """Raise :class:`ContractMismatch` naming every field in which ``actual`` differs from ``expected``."""
    keys = sorted(set(expected) | set(actual))
    diff = [f"{k}: {expected.get(k)!r} != {actual.get(k)!r}" for k in keys if expected.get(k) != actual.get(k)]
    if diff:
        raise ContractMismatch(f"{what}: embedding contracts differ ({'; '.join(diff)}); {hint}")
