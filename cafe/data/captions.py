"""Caption rules: the answer of an instruction record becomes the long caption, with chat debris removed;
the short caption (for the contrastive loss, VladVA) is cut from it by a configured rule."""

from __future__ import annotations

import re

from cafe.config import ShortCaptionConfig

# image placeholders, chat-template tokens and role prefixes that leak into published answers
_TOKENS = re.compile(r"<image>|<video>|<\|im_(?:start|end)\|>|<\|endoftext\|>|<\|eot_id\|>|</?s>|\[/?INST\]",
                     re.IGNORECASE)
_ROLE = re.compile(r"^\s*(?:assistant|gpt|###\s*(?:assistant|response))\s*:\s*", re.IGNORECASE | re.MULTILINE)
# a sentence ends at . ! ? followed by the end or a space and a capital/digit (so "e.g. a" does not cut)
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z0-9\"'(]|\s*$)")
_WORDS = re.compile(r"\w")


def clean_answer(text: str) -> str:
    """The answer without placeholders and chat debris, whitespace collapsed."""
    return " ".join(_ROLE.sub(" ", _TOKENS.sub("\n", text)).split())


def usable(text: str) -> bool:
    """An answer worth training on has at least one word character after cleaning."""
    return bool(_WORDS.search(text))


def short_caption(long: str, cfg: ShortCaptionConfig) -> str:
    """The short caption: the first sentence (or the whole text), at most ``max_words`` words."""
    text = long
    if cfg.rule == "first_sentence":
        end = _SENTENCE_END.search(text)
        text = text[:end.end()] if end else text
    return " ".join(text.split()[:cfg.max_words])
