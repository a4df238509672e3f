"""LLaVA-1.5 through transformers: a fixed-resolution CLIP tower whose patch features (the CLS token
dropped, ``vision_feature_select_strategy="default"``) fill a fixed number of image tokens, an MLP projector
and a Llama LM prompted in the Vicuna "USER: ... ASSISTANT:" style. The adapter and a tiny model of the same
architecture."""

from __future__ import annotations

from typing import Iterable

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from cafe.config import ModelConfig, PromptConfig, TinyModelConfig
from cafe.models.adapter import VLMAdapter
from cafe.models.tiny import set_generation_tokens, tokenizer_corpus, train_word_tokenizer

# LLaVA-1.5's conversation format; the answer ends with </s>, the end of an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %} "
    "{% else %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
CHAT_WORDS = "USER ASSISTANT :"


def train_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    return train_word_tokenizer([CHAT_WORDS, *corpus], SPECIAL_TOKENS, CHAT_TEMPLATE, pad="<pad>", eos="</s>",
                                bos="<s>", extra_special_tokens={"image_token": "<image>"})


def build_tiny(corpus: Iterable[str], image_size: int, tiny: TinyModelConfig, prompts: PromptConfig,
               model_cfg: ModelConfig | None = None, seed: int = 0) -> "LlavaAdapter":
    """A randomly initialised LLaVA-1.5 small enough for CPU (CLIP tower with a CLS token + Llama LM)."""
    import torch

    tokenizer = train_tokenizer(tokenizer_corpus(corpus, prompts))
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": image_size},
                                             crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=tiny.patch_size,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               num_additional_image_tokens=1)  # CLIP's CLS, dropped by the "default" strategy
    vision = CLIPVisionConfig(hidden_size=tiny.vision_hidden, intermediate_size=4 * tiny.vision_hidden,
                              num_hidden_layers=tiny.vision_layers, num_attention_heads=tiny.vision_heads,
                              image_size=image_size, patch_size=tiny.patch_size)
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=tiny.text_hidden, intermediate_size=tiny.text_intermediate,
        num_hidden_layers=tiny.text_layers, num_attention_heads=tiny.text_heads,
        num_key_value_heads=tiny.text_kv_heads, max_position_embeddings=tiny.max_positions,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    # LLaVA-1.5 reads the second-to-last tower layer; a tower of a layer or two reads its last one
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         image_seq_length=(image_size // tiny.patch_size) ** 2, tie_word_embeddings=True)
    model_cfg = model_cfg or ModelConfig()
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation=model_cfg.attn_implementation)
    set_generation_tokens(model, tokenizer)
    return LlavaAdapter(model, processor, prompts, model_cfg)


class LlavaAdapter(VLMAdapter):
    """Image tokens: ``<image>`` expanded to a fixed (size/patch)^2 patch features, CLS dropped."""

    family = "llava"
    model_class = LlavaForConditionalGeneration
    processor_class = LlavaProcessor
    build_tiny = staticmethod(build_tiny)
