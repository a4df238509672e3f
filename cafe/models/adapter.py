"""The model adapter: the one place that knows how a vision-language model is prompted and read.

The objective and the trainer only see three operations:

- ``embed(inputs)``: last-layer hidden state of the last real token of an embedding instruction
  (paper Table 1), L2-normalised; correct under left and right padding;
- ``lm_loss(inputs)``: next-token loss on the answer tokens only, with logits computed only where a
  label is (not at every position of the sequence);
- ``generate(images, prompts)``: greedy or sampled answers.

A model family (LLaVA-OneVision here) subclasses :class:`VLMAdapter` and says how to load its model and
processor; the prompt building goes through the family's own chat template.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from cafe.config import ModelConfig, PromptConfig

IGNORE_INDEX = -100


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (left or right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).to(torch.long).argmax(dim=1)


class VLMAdapter:
    """Prompts, pooling and losses for one loaded model + processor."""

    model_class: Any = None
    processor_class: Any = None

    def __init__(self, model, processor, prompts: PromptConfig, model_cfg: ModelConfig | None = None):
        self.model = model
        self.processor = processor
        self.prompts = prompts
        self.model_cfg = model_cfg or ModelConfig()
        self.tokenizer = processor.tokenizer

    # ----------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, path: str | Path, prompts: PromptConfig, model_cfg: ModelConfig | None = None):
        """Load a checkpoint directory or hub id (never with remote code)."""
        model_cfg = model_cfg or ModelConfig()
        dtype = getattr(torch, model_cfg.dtype)
        model = cls.model_class.from_pretrained(
            str(path), dtype=dtype, attn_implementation=model_cfg.attn_implementation, trust_remote_code=False
        )
        processor = cls.processor_class.from_pretrained(str(path), trust_remote_code=False)
        adapter = cls(model, processor, prompts, model_cfg)
        if model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return adapter

    def save_pretrained(self, path: str | Path) -> None:
        """Model (safetensors), processor, tokenizer and chat template, loadable by ``from_pretrained``."""
        self.model.save_pretrained(str(path), safe_serialization=True)
        self.processor.save_pretrained(str(path))

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
        return self.processor.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)

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
            batch = self.processor(**kwargs)
        return batch.to(self.device)

    def image_embed_inputs(self, images: Sequence[Image.Image]):
        """Embedding instruction with the image and the image prompt."""
        user = [{"type": "image"}, {"type": "text", "text": self.prompts.image_embed}]
        texts = [self._template(self._messages(user), True)] * len(images)
        return self._encode(texts, images, self.model_cfg.embed_padding_side)

    def text_embed_inputs(self, texts: Sequence[str]):
        """Embedding instruction with the sentence and the text prompt; no image, no vision work."""
        prompts = [
            self._template(self._messages([{"type": "text", "text": f"{t}\n{self.prompts.text_embed}"}]), True)
            for t in texts
        ]
        return self._encode(prompts, None, self.model_cfg.embed_padding_side)

    def lm_inputs(self, images: Sequence[Image.Image], prompts: Sequence[str], answers: Sequence[str]):
        """Language instruction with labels on the answer tokens (and end-of-turn) only."""
        full, heads = [], []
        for prompt, answer in zip(prompts, answers):
            user = [{"type": "image"}, {"type": "text", "text": prompt}]
            full.append(self._template(self._messages(user, answer), False))
            heads.append(self._template(self._messages(user), True))
        batch = self._encode(full, images, "right")
        image_token_id = self.processor.image_token_id
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        for i, head in enumerate(heads):
            head_ids = self.tokenizer(head, add_special_tokens=False)["input_ids"]
            n_image = int((batch["input_ids"][i] == image_token_id).sum())
            head_len = len(head_ids) - head_ids.count(image_token_id) + n_image
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
        return {k: v for k, v in inputs.items() if k != "labels"}

    def hidden_states(self, inputs) -> torch.Tensor:
        """Last-layer hidden states (after the final norm), without computing logits."""
        return self.model.model(**self._model_inputs(inputs), use_cache=False).last_hidden_state

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
