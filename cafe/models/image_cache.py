"""Processed images kept in memory, so each distinct image goes through the image processor once.

Training visits the same few thousand images many times (the embedded base: 4,000 images, ~19 passes) and a
CAFe step processes each image twice (the caption and the embedding instruction); the processor's resizing,
anyres cropping and normalising then cost about a fifth of a CPU step. :class:`CachedImageProcessor` wraps a
family's image processor: it processes the images of a call it has not seen, one by one, and joins the
per-image outputs as the processor joins a batch (patch counts padded with zeros, as LLaVA-OneVision pads;
flattened patches concatenated, as Qwen2-VL's are). Entries are keyed by the image's pixels, mode and size
and the call's options, bounded in bytes (least recently used goes first). A call whose outputs cannot be
joined per image goes to the processor whole.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import torch
from transformers import BatchFeature


def image_key(image: Any, options: tuple) -> bytes:
    """A digest of an image's pixels, mode and size and the processing options."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((type(image).__name__, getattr(image, "mode", None), getattr(image, "size", None),
                        getattr(image, "shape", None), getattr(image, "dtype", None), options)).encode())
    digest.update(image.tobytes() if hasattr(image, "tobytes") else repr(image).encode())
    return digest.digest()


def _join(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per-image outputs joined along the batch, or None where a value is not a tensor."""
    joined = {}
    for key in parts[0]:
        values = [part[key] for part in parts]
        if not all(isinstance(v, torch.Tensor) for v in values):
            return None
        if values[0].dim() >= 2 and len({v.shape[1] for v in values}) > 1:
            longest = max(v.shape[1] for v in values)
            values = [torch.cat([v, v.new_zeros((v.shape[0], longest - v.shape[1], *v.shape[2:]))], dim=1)
                      for v in values]
        if len({v.shape[1:] for v in values}) > 1:
            return None
        joined[key] = torch.cat(values)
    return joined


class CachedImageProcessor:
    """An image processor that remembers what it produced for each image (see the module docstring)."""

    def __init__(self, inner: Any, max_mb: float):
        self.inner = inner
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, tuple[dict[str, Any], int]] = OrderedDict()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # sizes, grid pinpoints, ... as the processor's own
        inner = self.__dict__.get("inner")
        if inner is None:  # not yet initialised (copy, unpickling)
            raise AttributeError(name)
        return getattr(inner, name)

    def __len__(self) -> int:
        return len(self._entries)

    def _one(self, image: Any, options: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        key = image_key(image, options)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found[0]
        out = self.inner([image], **{**kwargs, "return_tensors": "pt"})
        entry = dict(out.items())
        size = sum(v.numel() * v.element_size() for v in entry.values() if isinstance(v, torch.Tensor))
        with self._lock:
            self.misses += 1
            if key not in self._entries and size <= self.max_bytes:
                self._entries[key] = (entry, size)
                self.bytes += size
                while self.bytes > self.max_bytes:
                    self.bytes -= self._entries.popitem(last=False)[1][1]
        return entry

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        if not isinstance(images, (list, tuple)) or not images or not all(hasattr(i, "tobytes") for i in images):
            return self.inner(images, **kwargs)
        options = tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k != "return_tensors"))
        joined = _join([self._one(image, options, kwargs) for image in images])
        if joined is None:
            return self.inner(images, **kwargs)
        return BatchFeature(data=joined, tensor_type=kwargs.get("return_tensors"))
