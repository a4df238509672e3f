"""The adapter of every family: padding-safe pooling, answer-only labels, logits only at labels, save and
reload, generation; and each family's own image-token handling."""

import pytest
import torch
from PIL import Image

from cafe.models import FAMILIES, load_adapter
from cafe.models.adapter import IGNORE_INDEX, last_token_index
from tests.conftest import make_adapter

TEXTS = ["a red circle.", "a large blue cross and a small white diamond at the top left.", "two objects: a green square that is small and a black triangle that is large."]
ANSWERS = ["a red circle.", "a small blue square and a white cross."]


def _images(world, n):
    return [Image.open(world / "eval" / "images" / f"ret{i:06d}.png").convert("RGB") for i in range(n)]


@pytest.fixture(params=sorted(FAMILIES))
def family_params(request, params):
    params.model.family = request.param
    return params


@pytest.fixture()
def fam_adapter(family_params):
    return make_adapter(family_params)


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


def test_embeddings_do_not_depend_on_padding_side_or_batch(fam_adapter, world):
    adapter = fam_adapter
    adapter.model.eval()
    adapter.model_cfg.embed_padding_side = "left"
    left = adapter.encode_texts(TEXTS)
    adapter.model_cfg.embed_padding_side = "right"
    right = adapter.encode_texts(TEXTS)
    alone = torch.cat([adapter.encode_texts([t]) for t in TEXTS])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    assert torch.allclose(left.norm(dim=-1), torch.ones(3))
    assert (left[0] - left[1]).abs().max() > 1e-3  # different sentences, different embeddings
    images = _images(world, 3)
    torch.testing.assert_close(adapter.encode_images(images), torch.cat([adapter.encode_images([i]) for i in images]),
                               atol=1e-5, rtol=1e-5)


def test_prompts_go_through_the_familys_chat_template(fam_adapter, world):
    batch = fam_adapter.image_embed_inputs(_images(world, 1))
    text = fam_adapter.tokenizer.decode(batch["input_ids"][0])
    marker = {"llava_onevision": "<|im_start|> assistant", "qwen2_vl": "<|vision_start|>", "llava": "ASSISTANT :"}
    assert marker[fam_adapter.family] in text
    assert "Compress this image in one word" in text.replace(" :", ":")


def test_labels_cover_only_the_answer(fam_adapter, world):
    adapter = fam_adapter
    batch = adapter.lm_inputs(_images(world, 2), ["Describe the image briefly."] * 2, ANSWERS)
    for i, answer in enumerate(ANSWERS):
        labelled = batch["input_ids"][i][batch["labels"][i] != IGNORE_INDEX]
        assert adapter.tokenizer.decode(labelled, skip_special_tokens=True).replace(" ", "") == answer.replace(" ", "")
        assert int(labelled[-1]) == adapter.tokenizer.eos_token_id  # the end of the assistant turn is learned


def test_lm_loss_equals_the_models_own_full_logit_loss(fam_adapter, world):
    batch = fam_adapter.lm_inputs(_images(world, 3), ["Describe the image briefly."] * 3, TEXTS)
    ours = fam_adapter.lm_loss(batch)
    reference = fam_adapter.model(**fam_adapter._model_inputs(batch), labels=batch["labels"]).loss
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_saved_checkpoint_reloads_to_identical_embeddings_and_generations(fam_adapter, family_params, world, tmp_path):
    adapter = fam_adapter
    adapter.save_pretrained(tmp_path / "ckpt")
    again = load_adapter(tmp_path / "ckpt", family_params.prompts, family_params.model)
    assert type(again) is type(adapter)
    images = _images(world, 2)
    for a in (adapter, again):
        a.model.eval()
    torch.testing.assert_close(adapter.encode_images(images), again.encode_images(images), atol=0, rtol=0)
    torch.testing.assert_close(adapter.encode_texts(TEXTS), again.encode_texts(TEXTS), atol=0, rtol=0)
    prompts = ["Describe the image briefly."] * 2
    generated = adapter.generate(images, prompts, max_new_tokens=6)
    assert generated == again.generate(images, prompts, max_new_tokens=6)
    assert len(generated) == 2 and all(g.strip() for g in generated)


def test_qwen2_vl_gives_an_image_as_many_tokens_as_its_size(params):
    params.model.family = "qwen2_vl"
    adapter = make_adapter(params)
    adapter.model.eval()
    small, large = Image.new("RGB", (32, 48), "red"), Image.new("RGB", (64, 64), "red")
    batch = adapter.image_embed_inputs([small, large])
    tokens = (batch["input_ids"] == adapter.processor.image_token_id).sum(dim=1).tolist()
    side = params.model.tiny.patch_size  # one LLM token per patch_size px after the 2x2 merge
    assert tokens == [(32 // side) * (48 // side), (64 // side) ** 2]
    mixed = adapter.embed(batch)
    torch.testing.assert_close(mixed, torch.cat([adapter.encode_images([small]), adapter.encode_images([large])]),
                               atol=1e-5, rtol=1e-5)


def test_loading_a_directory_that_is_not_a_checkpoint_says_so(params, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_adapter(tmp_path, params.prompts, params.model)


def test_an_unknown_family_is_named(params):
    params.model.family = "gpt2"
    with pytest.raises(ValueError, match="qwen2_vl"):
        make_adapter(params)


def test_templates_and_heads_are_rendered_once_and_as_the_processor_renders_them(fam_adapter, world):
    """The adapter remembers rendered conversations; what it returns is the processor's own template, and the
    labels of a batch built from remembered heads equal those of a fresh adapter's first batch."""
    images = _images(world, 2)
    first = fam_adapter.lm_inputs(images, ["What is here?", "Describe it."], ANSWERS)
    again = fam_adapter.lm_inputs(images, ["What is here?", "Describe it."], ANSWERS)
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["input_ids"], again["input_ids"])
    assert fam_adapter._render.cache_info().hits >= 4 and fam_adapter._head_length.cache_info().hits >= 2
    user = [{"type": "image"}, {"type": "text", "text": "What is here?"}]
    messages = fam_adapter._messages(user, ANSWERS[0])
    direct = fam_adapter.processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert fam_adapter._template(messages, False) == direct
    other = fam_adapter._messages([{"type": "image"}, {"type": "text", "text": "Describe it."}], ANSWERS[1])
    assert fam_adapter._template(other, False) != direct
