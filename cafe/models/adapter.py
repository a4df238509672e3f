"""The model adapter: the one place that knows how a vision-language model is prompted and read.

The objective and the trainer only see three operations:

- ``embed(inputs)``: last-layer hidden state of the last real token of an embedding instruction
  (paper Table 1), L2-normalised; correct under left and right padding;
- ``lm_loss(inputs)``: next-token loss on the answer tokens only, with logits computed only where a
  label is (not at every position of the sequence);
- ``generate(images, prompts)``: greedy or sampled answers.

A model family subclasses :class:`VLMAdapter`: it names its model and processor classes, where its vision
tower and projector live, and how to build a tiny model of its architecture from config. Everything else
(prompts through the family's own chat template, pooling, losses, generation, LoRA and soft prompts from
``cafe.models.tuning``, saving and loading) is shared here.
"""

from __future__ import annotations

import copy
import functools
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from cafe.config import ModelConfig, PromptConfig, TinyModelConfig
from cafe.contract import write_contract
from cafe.models import tuning
from cafe.models.image_cache import CachedImageProcessor

IGNORE_INDEX = -100


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (left or right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).to(torch.long).argmax(dim=1)


class VLMAdapter:
    """Prompts, pooling and losses for one loaded model + processor."""

    family: str = ""
    model_class: Any = None
    processor_class: Any = None
    # parameter-name prefixes of the parts (everything else is the LLM); projector is checked first
    vision_prefixes: tuple[str, ...] = ("model.vision_tower.",)
    projector_prefixes: tuple[str, ...] = ("model.multi_modal_projector.",)

    def __init__(self, model, processor, prompts: PromptConfig, model_cfg: ModelConfig | None = None):
        self.model = model
        self.processor = processor
        self.prompts = prompts
        self.model_cfg = model_cfg or ModelConfig()
        self.tokenizer = processor.tokenizer
        self.peft = None  # peft.PeftModel wrapping self.model in place when LoRA is on
        self.soft_prompt: tuning.SoftPrompt | None = None
        self.trainable = {part: True for part in tuning.PARTS}
        self.base_path: str | None = None  # the checkpoint the weights (or LoRA's base weights) came from
        self.truncated_texts = 0  # captions/answers cut to model.max_text_tokens so far (the train log counts them)
        # with model.image_cache_mb, inputs are built by a copy of the processor whose image processor remembers
        # each image's output; the processor itself (what is saved) stays as loaded
        self.image_processor = processor.image_processor
        self._encoder = processor
        if self.model_cfg.image_cache_mb:
            self.image_processor = CachedImageProcessor(processor.image_processor, self.model_cfg.image_cache_mb)
            self._encoder = copy.copy(processor)
            self._encoder.image_processor = self.image_processor
        # training renders the same conversations every epoch: each distinct one is templated (and a prompt's
        # head tokenized) once
        self._render = functools.lru_cache(maxsize=2**16)(self._render_uncached)
        self._head_length = functools.lru_cache(maxsize=2**12)(self._head_length_uncached)

    # ----------------------------------------------------------------- loading and saving
    @classmethod
    def build_tiny(cls, corpus: list[str], image_size: int, tiny: TinyModelConfig, prompts: PromptConfig,
                   model_cfg: ModelConfig | None = None, seed: int = 0) -> "VLMAdapter":
        """A randomly initialised model of the family's architecture with a tokenizer trained on ``corpus``."""
        raise NotImplementedError(f"{cls.__name__} has no tiny from-config model")

    @classmethod
    def from_pretrained(cls, path: str | Path, prompts: PromptConfig, model_cfg: ModelConfig | None = None,
                        fresh_tuning: bool = True):
        """Load a full or LoRA checkpoint directory, or a hub id (never with remote code).

        A LoRA directory loads its base checkpoint and its adapters; a soft prompt saved with a checkpoint
        comes back with it. With ``fresh_tuning``, LoRA and a soft prompt that ``model_cfg`` asks for and the
        checkpoint does not hold are added new (the start of a parameter-efficient run).
        """
        model_cfg = model_cfg or ModelConfig()
        local = Path(path)
        base = tuning.base_of(local) if local.is_dir() else None
        weights = base or str(path)
        model = cls.model_class.from_pretrained(
            weights, dtype=getattr(torch, model_cfg.dtype), attn_implementation=model_cfg.attn_implementation,
            trust_remote_code=False,
        )
        processor = cls.processor_class.from_pretrained(str(path), trust_remote_code=False)
        adapter = cls(model, processor, prompts, model_cfg)
        adapter.base_path = str(Path(weights).resolve()) if Path(weights).is_dir() else weights
        if model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        tuning.setup(adapter, model_cfg, local if local.is_dir() else None, fresh_tuning)
        return adapter

    def save_pretrained(self, path: str | Path) -> None:
        """Model (safetensors) or, with LoRA, only the adapters and the parts trained in full; the soft
        prompt; processor, tokenizer and chat template; the embedding contract. Loadable by
        ``from_pretrained`` and (full checkpoints) by plain transformers."""
        tuning.save(self, Path(path))
        write_contract(self, path)

    def part_of(self, name: str) -> str:
        """"vision_tower", "projector" or "llm" for a parameter or module name."""
        if name.startswith(self.projector_prefixes):
            return "projector"
        if name.startswith(self.vision_prefixes):
            return "vision_tower"
        return "llm"

    def soft_prompt_init(self, n: int) -> torch.Tensor:
        """Start values of an ``n``-vector soft prompt: the image prompt's word embeddings, repeated."""
        ids = self.tokenizer(self.prompts.image_embed, add_special_tokens=False)["input_ids"] or [self.tokenizer.unk_token_id]
        table = self.model.get_input_embeddings().weight.detach()
        return table[torch.tensor([ids[i % len(ids)] for i in range(n)])].float()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----------------------------------------------------------------- prompt building
    def _messages(self, user: list[dict[str, str]], answer: str | None = None) -> list[dict]:
        messages = []
        if self.prompts.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.prompts.system}]})
        messages.append({"role": "user", "content": user})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def _template(self, messages: list[dict], generation_prompt: bool) -> str:
        return self._render(json.dumps(messages), generation_prompt)

    def _render_uncached(self, messages: str, generation_prompt: bool) -> str:
        """The chat template applied once per distinct conversation (training repeats them every epoch)."""
        return self.processor.apply_chat_template(json.loads(messages), add_generation_prompt=generation_prompt,
                                                  tokenize=False)

    def _head_length_uncached(self, head: str) -> tuple[int, int]:
        """Tokens of a prompt's head as the processor adds them, and how many of them are image tokens."""
        ids = self.tokenizer(head)["input_ids"]
        return len(ids), ids.count(self.processor.image_token_id)

    @contextmanager
    def _padding(self, side: str):
        previous = self.tokenizer.padding_side
        self.tokenizer.padding_side = side
        try:
            yield
        finally:
            self.tokenizer.padding_side = previous

    def _encode(self, texts: list[str], images: Sequence[Image.Image] | None, side: str):
        with self._padding(side):
            kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
            if images is not None:
                kwargs["images"] = list(images)
            batch = self._encoder(**kwargs)
        return batch.to(self.device)

    def _soft_placeholder(self) -> str:
        """Text standing for the soft prompt's slots: the pad token (its real occurrences are the attended ones)."""
        if self.soft_prompt is None:
            return ""
        if self.tokenizer.pad_token is None:
            raise ValueError("soft prompts need a tokenizer with a pad token to mark their positions")
        return self.tokenizer.pad_token * self.soft_prompt.tokens

    def _encode_embedding(self, texts: list[str], images: Sequence[Image.Image] | None):
        batch = self._encode(texts, images, self.model_cfg.embed_padding_side)
        if self.soft_prompt is not None:
            mask = (batch["input_ids"] == self.tokenizer.pad_token_id) & batch["attention_mask"].bool()
            if not bool((mask.sum(dim=1) == self.soft_prompt.tokens).all()):
                raise ValueError(f"an embedding instruction contains the pad token {self.tokenizer.pad_token!r} "
                                 "itself; remove it from the text or prompts")
            batch["soft_prompt_mask"] = mask
        return batch

    def truncate(self, texts: Sequence[str]) -> list[str]:
        """Each caption or answer cut to ``model.max_text_tokens`` tokens (at a token boundary of the original
        text), so an unbounded caption cannot blow up a step; each cut is counted in ``truncated_texts``."""
        limit = self.model_cfg.max_text_tokens
        out = []
        for text in texts:
            if len(text.encode("utf-8", "replace")) >= limit:  # a token covers at least a byte: shorter ones fit
                enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                if len(enc["input_ids"]) > limit:
                    text = text[:enc["offset_mapping"][limit - 1][1]]
                    self.truncated_texts += 1
            out.append(text)
        return out

    def image_embed_inputs(self, images: Sequence[Image.Image]):
        """Embedding instruction with the image and the image prompt (soft prompt slots before its words)."""
        user = [{"type": "image"}, {"type": "text", "text": self._soft_placeholder() + self.prompts.image_embed}]
        texts = [self._template(self._messages(user), True)] * len(images)
        return self._encode_embedding(texts, images)

    def text_embed_inputs(self, texts: Sequence[str]):
        """Embedding instruction with the sentence and the text prompt; no image, no vision work."""
        prompt = self._soft_placeholder() + self.prompts.text_embed
        prompts = [self._template(self._messages([{"type": "text", "text": f"{t}\n{prompt}"}]), True)
                   for t in self.truncate(texts)]
        return self._encode_embedding(prompts, None)

    def image_text_embed_inputs(self, images: Sequence[Image.Image], texts: Sequence[str]):
        """Embedding instruction with an image and a text (a composed query, e.g. an image and a question),
        then the image prompt."""
        prompt = self._soft_placeholder() + self.prompts.image_embed
        prompts = [self._template(self._messages([{"type": "image"}, {"type": "text", "text": f"{t}\n{prompt}"}]), True)
                   for t in texts]
        return self._encode_embedding(prompts, images)

    def lm_inputs(self, images: Sequence[Image.Image], prompts: Sequence[str], answers: Sequence[str]):
        """Language instruction with labels on the answer tokens (and end-of-turn) only."""
        full, heads = [], []
        for prompt, answer in zip(prompts, self.truncate(answers)):
            user = [{"type": "image"}, {"type": "text", "text": prompt}]
            full.append(self._template(self._messages(user, answer), False))
            heads.append(self._template(self._messages(user), True))
        batch = self._encode(full, images, "right")
        image_token_id = self.processor.image_token_id
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        for i, head in enumerate(heads):
            n_tokens, n_placeholders = self._head_length(head)
            n_image = int((batch["input_ids"][i] == image_token_id).sum())
            head_len = n_tokens - n_placeholders + n_image
            labels[i, :head_len] = IGNORE_INDEX
        batch["labels"] = labels
        return batch

    def generation_inputs(self, images: Sequence[Image.Image], prompts: Sequence[str]):
        texts = [
            self._template(self._messages([{"type": "image"}, {"type": "text", "text": p}]), True) for p in prompts
        ]
        return self._encode(texts, images, "left")

    # ----------------------------------------------------------------- computation
    def _model_inputs(self, inputs) -> dict[str, Any]:
        return {k: v for k, v in inputs.items() if k not in ("labels", "soft_prompt_mask")}

    def hidden_states(self, inputs) -> torch.Tensor:
        """Last-layer hidden states (after the final norm), without computing logits."""
        if self.soft_prompt is None:
            return self.model.model(**self._model_inputs(inputs), use_cache=False).last_hidden_state
        self.soft_prompt.mask = inputs.get("soft_prompt_mask")
        try:
            return self.model.model(**self._model_inputs(inputs), use_cache=False).last_hidden_state
        finally:
            self.soft_prompt.mask = None

    def embed(self, inputs) -> torch.Tensor:
        hidden = self.hidden_states(inputs)
        idx = last_token_index(inputs["attention_mask"])
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
        return F.normalize(pooled.float(), dim=-1)

    def lm_loss(self, inputs, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy over labelled positions ("mean" or "sum"); the LM head runs only there."""
        hidden = self.hidden_states(inputs)[:, :-1]
        targets = inputs["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.model.lm_head(hidden[keep])
        return F.cross_entropy(logits.float(), targets[keep], reduction=reduction)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self.embed(self.image_embed_inputs(images[i : i + batch_size]))
                          for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        return torch.cat([self.embed(self.text_embed_inputs(texts[i : i + batch_size]))
                          for i in range(0, len(texts), batch_size)])

    @torch.no_grad()
    def encode_image_texts(self, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self.embed(self.image_text_embed_inputs(images[i:i + batch_size], texts[i:i + batch_size]))
                          for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str], max_new_tokens: int = 32,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
        inputs = self.generation_inputs(images, prompts)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
        out = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id, **sampling,
        )
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
