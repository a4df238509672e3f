"""The model card of a registered version: ``README.md`` with Hugging Face front matter (base_model, license,
tags, datasets, model-index with the evaluation's metrics), readable tables (lineage, embedding contract,
gate checks, metrics) and a short "use it with transformers" snippet that needs no cafe code
(:func:`transformers_snippet`; a test runs it against the project's own embeddings and generation)."""

from __future__ import annotations

import math
from typing import Any

import yaml

LICENSE = "apache-2.0"
LIBRARY = "transformers"
# metrics.json key prefix -> (model-index task type, task name)
_TASKS = {"i2t_": ("image-text-retrieval", "Zero-shot image-to-text retrieval"),
          "t2i_": ("image-text-retrieval", "Zero-shot text-to-image retrieval"),
          "mmeb_": ("image-text-retrieval", "MMEB-format retrieval (hit@1)")}
_DEFAULT_TASK = ("image-text-to-text", "Generation, hallucination and understanding")
_FAMILY_CLASSES = {"llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor",
                                       "LlavaOnevisionImageProcessorPil", "llava_onevision")}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
    text = "—" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def front_matter(record: dict, params: dict | None = None) -> dict:
    """The card's YAML metadata as the Hugging Face hub reads it."""
    params = params or {}
    family = (params.get("model") or {}).get("family", "llava_onevision")
    base = (params.get("train") or {}).get("base_model") or record.get("parent")
    data = (params.get("repurpose") or {}).get("input") or (params.get("train") or {}).get("data")
    eval_data = (params.get("evaluate") or {}).get("data") or "held-out evaluation set"
    results = []
    by_task: dict[tuple[str, str], list[dict]] = {}
    for key, value in sorted((record.get("metrics") or {}).items()):
        number = _number(value)
        if number is None:
            continue
        task = next((t for prefix, t in _TASKS.items() if key.startswith(prefix)), _DEFAULT_TASK)
        by_task.setdefault(task, []).append({"type": key, "name": key, "value": round(number, 6)})
    for (kind, name), metrics in by_task.items():
        results.append({"task": {"type": kind, "name": name},
                        "dataset": {"type": "cafe-eval", "name": str(eval_data)}, "metrics": metrics})
    meta: dict[str, Any] = {"license": LICENSE, "library_name": LIBRARY, "pipeline_tag": "image-text-to-text",
                            "tags": ["cafe", "vision-language", "embeddings", "multimodal-retrieval", family]}
    if base:
        meta["base_model"] = str(base)
    meta["datasets"] = [str(data)] if data else []
    meta["model-index"] = [{"name": f"{record['name']}" + (f"-v{record['version']}" if record.get("version") else ""),
                            "results": results}]
    return meta


def transformers_snippet(family: str = "llava_onevision", path: str = ".", image: str = "example.png",
                         text: str = "a large red circle.") -> str:
    """Python that loads the checkpoint with plain transformers (no cafe), embeds an image and a text as the
    embedding contract says, and captions the image. Runs as is in the folder of the card."""
    model_cls, proc_cls, image_proc_cls, module = _FAMILY_CLASSES[family]
    return f'''import json
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, {model_cls}, {proc_cls}
from transformers.models.{module}.image_processing_pil_{module} import {image_proc_cls}

path = "{path}"  # this folder
contract = json.load(open(f"{{path}}/embedding_contract.json"))
model = {model_cls}.from_pretrained(path).eval()
try:
    processor = AutoProcessor.from_pretrained(path)  # its video part needs torchvision
except ImportError:  # no torchvision: the same processor without the video part
    class ImageOnlyProcessor({proc_cls}):
        def __init__(self, image_processor=None, tokenizer=None, **kwargs):
            super().__init__(image_processor, tokenizer, **kwargs)

    tokenizer, settings = AutoTokenizer.from_pretrained(path), json.load(open(f"{{path}}/processor_config.json"))
    processor = ImageOnlyProcessor({image_proc_cls}.from_pretrained(path), tokenizer,
                                   chat_template=tokenizer.chat_template, num_image_tokens=settings["num_image_tokens"],
                                   vision_feature_select_strategy=settings["vision_feature_select_strategy"])


def chat(content):  # one user turn (after the system prompt), ready for the assistant's answer
    system = [{{"role": "system", "content": [{{"type": "text", "text": contract["system_prompt"]}}]}}]
    messages = (system if contract["system_prompt"] else []) + [{{"role": "user", "content": content}}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def embed(content, images=None):  # last token's last hidden state, L2-normalised (the contract)
    inputs = processor(text=[chat(content)], images=images, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
    return torch.nn.functional.normalize(hidden[0, -1].float(), dim=-1)


image = Image.open("{image}").convert("RGB")
image_emb = embed([{{"type": "image"}}, {{"type": "text", "text": contract["image_prompt"]}}], images=[image])
text_emb = embed([{{"type": "text", "text": "{text}" + "\\n" + contract["text_prompt"]}}])
print("cosine similarity:", float(image_emb @ text_emb))

inputs = processor(text=[chat([{{"type": "image"}}, {{"type": "text", "text": "Describe the image briefly."}}])],
                   images=[image], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
caption = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
print("caption:", caption)
'''


def _params_dict(params: dict | str | None) -> dict:
    if isinstance(params, str):
        try:
            params = yaml.safe_load(params)
        except yaml.YAMLError:
            params = None
    return params if isinstance(params, dict) else {}


def model_card(record: dict, params: dict | str | None = None) -> str:
    """README.md of one registered version (``params``: the training config, a dict or its YAML text, for
    base model, data and family)."""
    params = _params_dict(params)
    meta = front_matter(record, params)
    gate = record.get("gate") or {}
    contract = record.get("contract")
    family = (contract or {}).get("family") or ((params or {}).get("model") or {}).get("family", "llava_onevision")
    title = f"{record['name']}" + (f" v{record['version']}" if record.get("version") else "")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {title}", "",
             "Fine-tuned with CAFe (contrastive-autoregressive fine-tuning): one vision-language model that gives "
             "embeddings for retrieval and generates text.", "", "## Lineage", ""]
    lines += _table(["field", "value"], [[f, f"`{record.get(f)}`"] for f in (
        "created_at", "created_by", "data_version", "code_version", "parent", "params_sha256", "upload_id")])
    lines += ["", "## Embedding contract", ""]
    if contract:
        lines += ["Embeddings of this model are comparable only with embeddings made the same way "
                  "(`embedding_contract.json`; serving refuses a gallery index made under another contract).", ""]
        lines += _table(["field", "value"], [[k, f"`{v}`"] for k, v in sorted(contract.items())])
    else:
        lines += ["This version was saved without `embedding_contract.json`."]
    verdict = "passed" if gate.get("passed") else "FAILED"
    lines += ["", f"## Gate: {verdict}", ""]
    checks = [c for c in gate.get("checks", []) if isinstance(c, dict)]
    if checks:
        lines += _table(["metric", "kind", "value", "95% CI", "threshold", "result", "why"],
                        [[c.get("metric"), c.get("kind"), c.get("value"), c.get("ci"), c.get("threshold"),
                          "pass" if c.get("passed") else "FAIL", c.get("message")] for c in checks])
    else:
        lines += ["No checks recorded."]
    lines += ["", "## Metrics", ""]
    lines += _table(["metric", "value"], [[k, v] for k, v in sorted((record.get("metrics") or {}).items())])
    lines += ["", "## Use it with transformers", ""]
    if family in _FAMILY_CLASSES:
        soft = (contract or {}).get("soft_prompt_tokens", 0)
        lines += ["Plain transformers, no cafe code: embed an image and a sentence as the contract says, and "
                  "caption the image." + (f" This version has a {soft}-vector soft prompt, which plain "
                                           "transformers does not apply: use `cafe` to embed with it." if soft else ""),
                  "", "```python", transformers_snippet(family).rstrip(), "```"]
    else:
        lines += [f"Load it with the `{family}` classes of transformers; the prompts are in the contract above."]
    lines += ["", "## Files", "", f"{len(record['files'])} files, {record['total_bytes']} bytes; sha256 of each in "
              "the version record, checked on every pull.", ""]
    return "\n".join(lines)
