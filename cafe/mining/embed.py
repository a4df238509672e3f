"""The pairs to mine and their embeddings: ids, contrastive captions, image hashes and pHashes read from the
shards in row-group batches (no image is kept), and the image and text embeddings of a model through the
evaluation's on-disk cache (:class:`cafe.evaluation.cache.EmbeddingCache`), so mining again with the same
model and pairs does not embed again."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm.auto import tqdm

from cafe.data.shards import filesystem
from cafe.evaluation.cache import EmbeddingCache, model_fingerprint, texts_fingerprint
from cafe.models.adapter import VLMAdapter


@dataclass
class Pairs:
    """One split of the shards, in the order training reads it (files sorted, rows in order)."""

    folder: str
    split: str
    ids: list[str]
    captions: list[str]  # the contrastive text (long, or short under train.captions=short_long)
    image_sha256: list[str]
    phash: list[int] | None

    def __len__(self) -> int:
        return len(self.ids)


def _files(folder: str, split: str) -> tuple[pafs.FileSystem, list[str]]:
    fs, root = filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{split}", allow_not_found=True))
    return fs, sorted(i.path for i in infos if i.path.endswith(".parquet"))


def _batches(folder: str, split: str, columns: list[str], size: int) -> Iterator[dict]:
    fs, files = _files(folder, split)
    for path in files:
        with fs.open_input_file(path) as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=size, columns=columns):
                yield batch.to_pydict()


def _rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def read_pairs(folder: str, split: str = "train", captions: str = "single", phash: bool = True,
               progress: bool = False) -> Pairs:
    """The split's pair keys; ``phash``: decode every image once for its 64-bit pHash."""
    import imagehash

    text = "short_caption" if captions == "short_long" else "long_caption"
    columns = ["id", text, "image_sha256"] + (["image"] if phash else [])
    pairs = Pairs(folder, split, [], [], [], [] if phash else None)
    if not _files(folder, split)[1]:
        raise FileNotFoundError(f"{folder}/{split}: no Parquet shards; run `cafe repurpose` (mine.data)")
    bar = tqdm(desc="mine: read pairs", unit=" pairs", disable=not progress, leave=False, mininterval=1.0)
    for cols in _batches(folder, split, columns, 256):
        pairs.ids += cols["id"]
        pairs.captions += cols[text]
        pairs.image_sha256 += cols["image_sha256"]
        if phash:
            pairs.phash += [int(str(imagehash.phash(_rgb(b))), 16) for b in cols["image"]]
        bar.update(len(cols["id"]))
    bar.close()
    return pairs


def embedding_cache(adapter: VLMAdapter, cache_dir: str, model_path: str | None) -> EmbeddingCache:
    """The evaluation's cache under the same model key (so `cafe evaluate` and `cafe mine` share texts)."""
    key = model_fingerprint(adapter.model, model_path, {
        "prompts": adapter.prompts.model_dump(), "dtype": adapter.model_cfg.dtype,
        "padding": adapter.model_cfg.embed_padding_side, "family": adapter.model_cfg.family})
    return EmbeddingCache(cache_dir or None, key)


def embed_pairs(adapter: VLMAdapter, pairs: Pairs, cache: EmbeddingCache, batch_size: int = 64,
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, text)`` embeddings ``[n, d]`` (L2-normalised, float32 on the CPU), row-aligned with ``pairs``."""

    def images() -> torch.Tensor:
        out = []
        with tqdm(total=len(pairs), desc="mine: embed images", unit=" img", disable=not progress, leave=False,
                  mininterval=1.0) as bar, torch.no_grad():
            for cols in _batches(pairs.folder, pairs.split, ["image"], batch_size):
                out.append(adapter.encode_images([_rgb(b) for b in cols["image"]], batch_size).float().cpu())
                bar.update(len(cols["image"]))
        return torch.cat(out)

    def texts() -> torch.Tensor:
        out = []
        with torch.no_grad():
            for lo in tqdm(range(0, len(pairs), 2 * batch_size), desc="mine: embed texts", disable=not progress,
                           leave=False, mininterval=1.0):
                out.append(adapter.encode_texts(pairs.captions[lo:lo + 2 * batch_size], 2 * batch_size).float().cpu())
        return torch.cat(out)

    # images are keyed by their content hashes in order (the shards hold bytes, not files)
    image = cache.get_or_compute("pair-images", texts_fingerprint(pairs.image_sha256), images)
    text = cache.get_or_compute("texts", texts_fingerprint(pairs.captions), texts)
    return image.float(), text.float()
