"""What every family's tiny from-config model shares: a word-level tokenizer trained on the corpus with the
family's special tokens and chat template, and generation settings taken from that tokenizer."""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from cafe.config import PromptConfig


def tokenizer_corpus(corpus: Iterable[str], prompts: PromptConfig) -> list[str]:
    """The corpus plus the prompts, so no prompt word is unknown."""
    return [*corpus, prompts.system, prompts.image_embed, prompts.text_embed, prompts.caption]


def train_word_tokenizer(corpus: Iterable[str], special_tokens: list[str], chat_template: str, *, pad: str,
                         eos: str, unk: str = "<unk>", bos: str | None = None,
                         extra_special_tokens: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the corpus (words and punctuation), with the given special tokens first."""
    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.train_from_iterator(list(corpus), trainers.WordLevelTrainer(special_tokens=special_tokens))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, unk_token=unk, eos_token=eos, bos_token=bos,
                                   extra_special_tokens=extra_special_tokens or {})
    fast.chat_template = chat_template
    return fast


def set_generation_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """Generation stops at the tokenizer's end-of-turn and pads with its pad token."""
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id, None
