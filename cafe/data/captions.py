"""Caption rules: the answer of an instruction record becomes the long caption, with chat debris removed;
the short caption (for the contrastive loss, VladVA) is cut from it by a configured rule."""

from __future__ import annotations

import re

from cafe.config import ShortCaptionConfig

# Image placeholders and chat-template markers that leak into published answers. Caption text made of another
# family's markers would be read as structure by that family's processor (an image placeholder without an
# image raises at the same step on every restart), so they are stripped, for every family in
# ``cafe.models.FAMILIES`` (each module's SPECIAL_TOKENS; tests/test_data_hardening.py checks) and the common
# chat formats: ChatML and Qwen-VL (<|im_start|>, <|vision_start|>, <|image_pad|>, any <|...|>), Llama 2/3
# ([INST], <<SYS>>, <|start_header_id|>), Gemma (<start_of_turn>), Mistral/LLaVA (<s>, </s>, <image>, <video>),
# Phi/InternVL (<|user|>, <img>, <IMG_CONTEXT>), and numbered placeholders (<image_1>, <image 2>).
MARKERS = (r"<\|im_start\|>\s*(?:system|user|assistant|tool)\b\s*:?", r"<\|start_header_id\|>\w*<\|end_header_id\|>",
           r"<start_of_turn>\s*(?:user|model)\b", r"<\|[^|<>\s]{1,40}\|>", r"</?(?:image|video|img|audio|s|pad|unk|bos|eos|mask)(?:[ _-]?\d+)?>",
           r"<IMG_CONTEXT>", r"</?(?:start_of_turn|end_of_turn|think|tool_call|tool_response)>",
           r"\[/?INST\]", r"<</?SYS>>", r"\[IMG\]", r"\[/?AVAILABLE_TOOLS\]")
_TOKENS = re.compile("|".join(MARKERS), re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
# role prefixes at a line start; only spaces and tabs around them ([^\S\n]), never newlines: "^\s*" let every line
# start of a run of newlines scan the whole run again (quadratic: one caption of 10^6 newlines took hours)
_ROLE = re.compile(r"^[^\S\n]*(?:assistant|gpt|###[^\S\n]*(?:assistant|response))[^\S\n]*:[^\S\n]*",
                   re.IGNORECASE | re.MULTILINE)
# a sentence ends at . ! ? followed by the end or a space and a capital/digit (so "e.g. a" does not cut)
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z0-9\"'(]|\s*$)")
_WORDS = re.compile(r"\w")


def clean_answer(text: str) -> str:
    """The answer without placeholders, chat markers of any family, role prefixes, control and bidi-override
    characters, whitespace collapsed. Stripping repeats until nothing changes (``<im<image>age>``)."""
    previous = None
    while previous != text:
        previous, text = text, _TOKENS.sub("\n", _CONTROL.sub("", text))
    return " ".join(_ROLE.sub(" ", text).split())


def has_markers(text: str) -> bool:
    return bool(_TOKENS.search(text))


def find_marker(text: str) -> str | None:
    """The first chat marker or image placeholder in ``text`` (after removing invisible characters, which
    could hide one), or None."""
    m = _TOKENS.search(_CONTROL.sub("", text))
    return m.group(0) if m else None


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
