"""A saved model is a standard transformers checkpoint: transformers' own processor class with every config its
loader needs (AutoProcessor gives the full processor or fails loudly, never a bare tokenizer); the embedding
contract in the model, the registry record and the model card; and the card's plain-transformers snippet, run
without cafe on the path, gives the project's embeddings and generation."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from cafe.contract import CONTRACT_FILE, ContractMismatch, check_contract, contract_of, read_contract
from cafe.models import load_adapter
from cafe.registry import CARD, Registry
from tests.conftest import make_adapter

GATE = {"passed": True, "checks": [{"metric": "i2t_R@1", "kind": "floor", "value": 0.5, "ci": [0.41, 0.59],
                                    "threshold": 0.3, "passed": True, "message": "0.5000 >= 0.3 required"}]}


@pytest.fixture()
def saved(params, tmp_path):
    adapter = make_adapter(params)
    out = tmp_path / "model"
    adapter.save_pretrained(out)
    return adapter, out


def test_saved_files_name_transformers_processor_and_its_configs(saved):
    adapter, out = saved
    proc = json.loads((out / "processor_config.json").read_text())
    assert proc["processor_class"] == "LlavaOnevisionProcessor"
    assert json.loads((out / "tokenizer_config.json").read_text())["processor_class"] == "LlavaOnevisionProcessor"
    video = json.loads((out / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "LlavaOnevisionVideoProcessor" == proc["video_processor"]["video_processor_type"]
    assert video["size"] == proc["image_processor"]["size"]
    # the project's own loader still reads it, with the same embeddings
    again = load_adapter(out, adapter.prompts, adapter.model_cfg)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    assert np.allclose(again.encode_images([image]).numpy(), adapter.encode_images([image]).numpy(), atol=1e-6)


def test_auto_processor_gives_the_full_processor_or_fails_loudly(saved):
    """Never the bare tokenizer that accepts images= and drops them."""
    from transformers import AutoProcessor, LlavaOnevisionProcessor

    _, out = saved
    if importlib.util.find_spec("torchvision") is None:  # this machine and CI: the video processor needs it
        with pytest.raises(ImportError, match="[Tt]orchvision"):
            AutoProcessor.from_pretrained(str(out))
    else:  # a machine with the usual dependencies (the GPU check script)
        processor = AutoProcessor.from_pretrained(str(out))
        assert isinstance(processor, LlavaOnevisionProcessor) and processor.image_processor is not None


def test_contract_is_in_model_record_and_card_and_checked(saved, tmp_path):
    adapter, out = saved
    contract = read_contract(out)
    assert contract == contract_of(adapter)
    assert contract["dim"] == adapter.model.config.text_config.hidden_size
    assert contract["image_prompt"] == adapter.prompts.image_embed and contract["pooling"] == "last_token"
    reg = Registry(tmp_path / "registry")
    record = reg.register(out, "cafe", metrics={"i2t_R@1": 0.5, "t2i_R@1": 0.25, "object_f1": 0.875, "n": "text"},
                          gate=GATE, data_version="d" * 64,
                          params={"train": {"base_model": "runs/base/model"}, "repurpose": {"input": "world.json"}})
    assert record["contract"] == contract and record["files"][CONTRACT_FILE]
    card = (reg.pull("cafe", 1, tmp_path / "pulled") / CARD).read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "runs/base/model"
    assert meta["datasets"] == ["world.json"] and "cafe" in meta["tags"]
    metrics = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics == {"i2t_R@1": 0.5, "t2i_R@1": 0.25, "object_f1": 0.875}  # numbers only
    assert f"| chat_template_sha256 | `{contract['chat_template_sha256']}` |" in body
    assert "| i2t_R@1 | floor | 0.5000 | [0.410, 0.590] | 0.3000 | pass |" in body  # the gate as a table, not JSON

    other = adapter.prompts.model_copy(update={"text_embed": "Summarise this sentence in one word:"})
    changed = contract_of(load_adapter(out, other, adapter.model_cfg))
    with pytest.raises(ContractMismatch, match="text_prompt"):
        check_contract(contract, changed, "model vs served prompts", "serve with the model's prompts")


def test_card_snippet_with_plain_transformers_matches_the_project(world, saved, tmp_path):
    """The card's "use it with transformers" snippet, run in a fresh interpreter with no cafe on the path,
    embeds an image and a text and captions the image exactly as cafe does."""
    adapter, out = saved
    reg = Registry(tmp_path / "registry")
    reg.register(out, "cafe", metrics={"i2t_R@1": 0.5}, gate=GATE, data_version="d" * 64)
    pulled = reg.pull("cafe", 1, tmp_path / "pulled")
    card = (pulled / CARD).read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    image_path = world / "eval" / "images" / "ret000003.png"
    text = "a large red circle."
    script = snippet.replace('Image.open("example.png")', f"Image.open({str(image_path)!r})")
    script += ("\nprint('RESULT ' + json.dumps({'image': image_emb.tolist(), 'text': text_emb.tolist(), "
               "'caption': caption}))\n")
    assert script != snippet
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-I", "-c", script], cwd=pulled, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "import cafe" not in script and "from cafe" not in script
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
    with Image.open(image_path) as img:
        image = img.convert("RGB")
    assert np.allclose(result["image"], adapter.encode_images([image])[0].numpy(), atol=1e-5)
    assert np.allclose(result["text"], adapter.encode_texts([text])[0].numpy(), atol=1e-5)
    assert result["caption"] == adapter.generate([image], [adapter.prompts.caption], max_new_tokens=32)[0]
