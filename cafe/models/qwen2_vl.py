"""Qwen2-VL through transformers: dynamic resolution (an image becomes as many tokens as its size gives,
after 2x2 patch merging) and M-RoPE (3-D rotary positions for image tokens, computed by the model from
``image_grid_thw`` and ``mm_token_type_ids``). The adapter, a processor without the video processor, and a
tiny model of the same architecture (Qwen2-VL vision transformer + Qwen2 LM with M-RoPE)."""

from __future__ import annotations

from typing import Iterable

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cafe.config import ModelConfig, PromptConfig, TinyModelConfig
from cafe.models.adapter import VLMAdapter
from cafe.models.tiny import set_generation_tokens, tokenizer_corpus, train_word_tokenizer

# Qwen2-VL's ChatML; an image is <|vision_start|><|image_pad|><|vision_end|>, the pad expanded by the processor.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
CHAT_WORDS = "system user assistant"
MERGE = 2  # 2x2 patches become one LLM token


class CafeQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without the video processor (which needs torchvision, and which CAFe never uses)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def train_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    return train_word_tokenizer(
        [CHAT_WORDS, *corpus], SPECIAL_TOKENS, CHAT_TEMPLATE, pad="<|endoftext|>", eos="<|im_end|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
    )


def build_tiny(corpus: Iterable[str], image_size: int, tiny: TinyModelConfig, prompts: PromptConfig,
               model_cfg: ModelConfig | None = None, seed: int = 0) -> "Qwen2VLAdapter":
    """A randomly initialised Qwen2-VL small enough for CPU. ``tiny.patch_size`` is the side of one LLM image
    token (a 2x2 merge of vision patches), as for the other families."""
    if tiny.patch_size % MERGE:
        raise ValueError(f"model.tiny.patch_size={tiny.patch_size} must be even for Qwen2-VL's 2x2 patch merge")
    head_dim = tiny.text_hidden // tiny.text_heads
    if head_dim % 2:
        raise ValueError(f"model.tiny.text_hidden / text_heads = {head_dim} must be even for M-RoPE")
    half = head_dim // 2  # rotary frequencies, split over (time, height, width)
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    tokenizer = train_tokenizer(tokenizer_corpus(corpus, prompts))
    patch = tiny.patch_size // MERGE
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=MERGE, temporal_patch_size=2,
        min_pixels=tiny.patch_size ** 2, max_pixels=image_size * image_size,
    )
    processor = CafeQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        vision_config=dict(depth=tiny.vision_layers, embed_dim=tiny.vision_hidden, hidden_size=tiny.text_hidden,
                           num_heads=tiny.vision_heads, mlp_ratio=4, patch_size=patch, spatial_merge_size=MERGE,
                           temporal_patch_size=2),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=tiny.text_hidden, intermediate_size=tiny.text_intermediate,
            num_hidden_layers=tiny.text_layers, num_attention_heads=tiny.text_heads,
            num_key_value_heads=tiny.text_kv_heads, max_position_embeddings=tiny.max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
            tie_word_embeddings=True,
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    model_cfg = model_cfg or ModelConfig()
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration._from_config(config, attn_implementation=model_cfg.attn_implementation)
    set_generation_tokens(model, tokenizer)
    return Qwen2VLAdapter(model, processor, prompts, model_cfg)


class Qwen2VLAdapter(VLMAdapter):
    """Image tokens: ``<|image_pad|>`` expanded to (h/14)(w/14)/4 tokens per image; positions are M-RoPE."""

    family = "qwen2_vl"
    model_class = Qwen2VLForConditionalGeneration
    processor_class = CafeQwen2VLProcessor
    vision_prefixes = ("model.visual.",)
    projector_prefixes = ("model.visual.merger.",)  # the patch merger is Qwen2-VL's projector

    build_tiny = staticmethod(build_tiny)

    def mrope_positions(self, input_ids: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """The M-RoPE position ids ``[3, n]`` the model gives one unpadded row ``input_ids`` (``n`` tokens) holding
        the images of ``image_grid_thw`` in a pass of its own: what a packed shared-prefix sequence continues
        (``cafe.training.shared_prefix``)."""
        types = (input_ids == self.processor.image_token_id).long()  # mm_token_type_ids: text 0, image 1
        positions, _ = self.model.model.get_rope_index(input_ids[None], types[None], image_grid_thw=image_grid_thw)
        return positions[:, 0]
