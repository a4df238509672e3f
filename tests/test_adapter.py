"""The adapter: padding-safe pooling, answer-only labels, logits only at labels, save and reload."""

import torch

from cafe.models import load_adapter
from cafe.models.adapter import IGNORE_INDEX, last_token_index

TEXTS = ["a red circle.", "a large blue cross and a small white diamond at the top left.", "two objects: a green square that is small and a black triangle that is large."]


def _images(world, n):
    from PIL import Image
    return [Image.open(world / "eval" / "images" / f"ret{i:06d}.png").convert("RGB") for i in range(n)]


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


def test_embeddings_do_not_depend_on_padding_side_or_batch(adapter, world):
    adapter.model.eval()
    adapter.model_cfg.embed_padding_side = "left"
    left = adapter.encode_texts(TEXTS)
    adapter.model_cfg.embed_padding_side = "right"
    right = adapter.encode_texts(TEXTS)
    alone = torch.cat([adapter.encode_texts([t]) for t in TEXTS])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    assert torch.allclose(left.norm(dim=-1), torch.ones(3))
    images = _images(world, 3)
    torch.testing.assert_close(adapter.encode_images(images), torch.cat([adapter.encode_images([i]) for i in images]),
                               atol=1e-5, rtol=1e-5)


def test_labels_cover_only_the_answer(adapter, world):
    batch = adapter.lm_inputs(_images(world, 2), ["Describe the image briefly."] * 2, ["a red circle.", "a small blue square and a white cross."])
    for i, answer in enumerate(["a red circle.", "a small blue square and a white cross."]):
        labelled = batch["input_ids"][i][batch["labels"][i] != IGNORE_INDEX]
        assert adapter.tokenizer.decode(labelled, skip_special_tokens=True).replace(" ", "") == answer.replace(" ", "")
        assert adapter.tokenizer.convert_ids_to_tokens(int(labelled[-1])) == "<|im_end|>"


def test_lm_loss_equals_the_models_own_full_logit_loss(adapter, world):
    batch = adapter.lm_inputs(_images(world, 3), ["Describe the image briefly."] * 3, TEXTS)
    ours = adapter.lm_loss(batch)
    reference = adapter.model(**batch).loss
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_saved_checkpoint_reloads_to_identical_embeddings_and_generations(adapter, params, world, tmp_path):
    adapter.save_pretrained(tmp_path / "ckpt")
    again = load_adapter(tmp_path / "ckpt", params.prompts, params.model)
    images = _images(world, 4)
    for a in (adapter, again):
        a.model.eval()
    torch.testing.assert_close(adapter.encode_images(images), again.encode_images(images), atol=0, rtol=0)
    torch.testing.assert_close(adapter.encode_texts(TEXTS), again.encode_texts(TEXTS), atol=0, rtol=0)
    prompts = ["Describe the image briefly."] * 4
    assert adapter.generate(images, prompts, max_new_tokens=8) == again.generate(images, prompts, max_new_tokens=8)


def test_loading_a_directory_that_is_not_a_checkpoint_says_so(params, tmp_path):
    import pytest
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_adapter(tmp_path, params.prompts, params.model)
