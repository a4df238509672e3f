"""LLaVA-OneVision through transformers: the adapter, its processor, and the tiny model of the same
architecture (SigLIP vision tower + Qwen2 language model) built from config for tests and the embedded
default."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from cafe.config import ModelConfig, PromptConfig, TinyModelConfig
from cafe.models.adapter import VLMAdapter
from cafe.models.standard import standardise_processor
from cafe.models.tiny import set_generation_tokens, tokenizer_corpus, train_word_tokenizer

# ChatML, as the Qwen2-based LLaVA-OneVision checkpoints use; images become "<image>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
CHAT_WORDS = "system user assistant"


class CafeLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """LLaVA-OneVision's processor without the video processor (which needs torchvision, and which
    CAFe never uses). Loads a real checkpoint's image processor, tokenizer and chat template, and saves as
    transformers' own ``LlavaOnevisionProcessor`` with a video processor config, so that plain
    ``AutoProcessor.from_pretrained`` loads the full processor (or fails loudly without torchvision)."""

    # transformers passes saved settings only to parameters named in the signature, so they are spelled out.
    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                 video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(
            image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
            image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio, **kwargs,
        )

    def save_pretrained(self, save_directory, **kwargs):
        files = super().save_pretrained(save_directory, **kwargs)
        standardise_processor(save_directory, "LlavaOnevisionProcessor", "LlavaOnevisionVideoProcessor")
        return files


def train_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the corpus (words and punctuation), with the chat special tokens."""
    return train_word_tokenizer([CHAT_WORDS, *corpus], SPECIAL_TOKENS, CHAT_TEMPLATE, pad="<pad>", eos="<|im_end|>",
                                extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})


def build_tiny(corpus: Iterable[str], image_size: int, tiny: TinyModelConfig, prompts: PromptConfig,
               model_cfg: ModelConfig | None = None, seed: int = 0) -> "LlavaOnevisionAdapter":
    """A randomly initialised LLaVA-OneVision of the real architecture, small enough for CPU."""
    import torch

    tokenizer = train_tokenizer(tokenizer_corpus(corpus, prompts))
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=[[image_size, image_size]]
    )
    patches = (image_size // tiny.patch_size) ** 2
    processor = CafeLlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
        num_image_tokens=patches, vision_feature_select_strategy="full",
    )
    vision = SiglipVisionConfig(
        hidden_size=tiny.vision_hidden, intermediate_size=4 * tiny.vision_hidden,
        num_hidden_layers=tiny.vision_layers, num_attention_heads=tiny.vision_heads,
        image_size=image_size, patch_size=tiny.patch_size, vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=tiny.text_hidden, intermediate_size=tiny.text_intermediate,
        num_hidden_layers=tiny.text_layers, num_attention_heads=tiny.text_heads,
        num_key_value_heads=tiny.text_kv_heads, max_position_embeddings=tiny.max_positions,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[image_size, image_size]], vision_feature_select_strategy="full",
        vision_feature_layer=-1, tie_word_embeddings=True,
    )
    model_cfg = model_cfg or ModelConfig()
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration._from_config(
        config, attn_implementation=model_cfg.attn_implementation
    )
    set_generation_tokens(model, tokenizer)
    return LlavaOnevisionAdapter(model, processor, prompts, model_cfg)


class LlavaOnevisionAdapter(VLMAdapter):
    """Image tokens: one ``<image>`` expanded to the tower's patches of every anyres crop (``image_sizes``)."""

    family = "llava_onevision"
    model_class = LlavaOnevisionForConditionalGeneration
    processor_class = CafeLlavaOnevisionProcessor
    projector_prefixes = ("model.multi_modal_projector.", "model.image_newline")
    build_tiny = staticmethod(build_tiny)


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()
