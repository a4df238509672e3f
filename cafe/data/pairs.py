"""Training reads the repurposed shards: a map-style dataset of ``(Sample, RGB image)`` items over one split,
so the global batch sampler decides, by seed and step, which rows each rank and loader worker reads. The
shards folder is a local path or ``s3://bucket/prefix`` (MinIO/S3; endpoint and credentials as for the
registry: CAFE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), read through pyarrow's filesystems."""

from __future__ import annotations

import bisect
import io
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image
from torch.utils.data import Dataset

from cafe.data.replay import ReplayDataset
from cafe.data.samples import Sample
from cafe.data.shards import filesystem, read_data_version


class ShardDataset(Dataset):
    """Map-style dataset over one split of the shards: ``(Sample, RGB image)`` items like
    :class:`~cafe.data.samples.SampleDataset`. Only the footers are read up front; an item reads its row
    group (the most recent ones are kept, up to ``cache_mb`` of images per process), so loader workers that
    take whole batches read disjoint rows; a split smaller than the cache is read once.

    ``captions="single"``: the long caption is both the answer (L_lm) and the contrastive text (the paper);
    ``"short_long"``: the short caption goes to L_con and the long one to L_lm (VladVA).
    """

    def __init__(self, folder: str | Path, split: str = "train", prompt: str = "Describe the image briefly.",
                 captions: str = "single", cache_mb: float = 256):
        if captions not in ("single", "short_long"):
            raise ValueError(f"captions must be 'single' or 'short_long', got {captions!r}")
        self.folder, self.split, self.prompt, self.captions = str(folder), split, prompt, captions
        self.version = read_data_version(self.folder)
        self._fs, root = filesystem(self.folder)
        self._groups: list[tuple[str, int]] = []
        self._starts: list[int] = []
        total = 0
        infos = self._fs.get_file_info(pafs.FileSelector(f"{root}/{split}", allow_not_found=True))
        for path in sorted(i.path for i in infos if i.path.endswith(".parquet")):
            meta = pq.ParquetFile(self._fs.open_input_file(path)).metadata
            for g in range(meta.num_row_groups):
                self._groups.append((str(path), g))
                self._starts.append(total)
                total += meta.row_group(g).num_rows
        self._len = total
        self._cache_limit, self._cached_bytes = cache_mb * 2**20, 0
        self._cache: OrderedDict[int, tuple[dict, int]] = OrderedDict()

    def __len__(self) -> int:
        return self._len

    def _group(self, index: int) -> dict:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index][0]
        path, g = self._groups[index]
        if self._fs is None:  # in a loader worker
            self._fs = filesystem(self.folder)[0]
        with self._fs.open_input_file(path) as fh:
            columns = pq.ParquetFile(fh).read_row_group(g).to_pydict()
        size = sum(len(b) for b in columns["image"])
        self._cache[index] = (columns, size)
        self._cached_bytes += size
        while self._cached_bytes > self._cache_limit and len(self._cache) > 1:
            self._cached_bytes -= self._cache.popitem(last=False)[1][1]
        return columns

    def __getitem__(self, index: int) -> tuple[Sample, Image.Image]:
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} {self.split} pairs")
        g = bisect.bisect_right(self._starts, index) - 1
        cols, row = self._group(g), index - self._starts[g]
        long, short = cols["long_caption"][row], cols["short_caption"][row]
        sample = Sample(id=cols["id"][row], image=f"{self._groups[g][0]}#{g}:{row}", prompt=self.prompt,
                        answer=long, caption=short if self.captions == "short_long" else long)
        with Image.open(io.BytesIO(cols["image"][row])) as img:
            return sample, img.convert("RGB")

    def __getstate__(self) -> dict:  # loader workers start with an empty cache
        return {**self.__dict__, "_cache": OrderedDict(), "_cached_bytes": 0, "_fs": None}

    def _column(self, name: str) -> list:
        """One column of the whole split, in index order (reads only that column, no image)."""
        out: list = []
        fs = self._fs or filesystem(self.folder)[0]
        for path, g in self._groups:
            with fs.open_input_file(path) as fh:
                out += pq.ParquetFile(fh).read_row_group(g, columns=[name]).column(name).to_pylist()
        return out

    def ids(self) -> list[str]:
        """Every pair id of the split, in index order."""
        return self._column("id")

    def captions_column(self) -> list[str]:
        """Every pair's caption as its items carry it (``Sample.caption``), in index order."""
        return self._column("short_caption" if self.captions == "short_long" else "long_caption")


class WithNegatives(Dataset):
    """``dataset``'s items with each pair's hard negatives (``cafe mine``'s folder): ``per_sample`` texts for its
    image and images for its caption, hardest first, read from ``pairs`` (the same split the negatives were
    mined from; negatives mined from other pairs are refused). Rule-made attribute swaps (``mine.source:
    attribute_swaps | both``) are texts of their own: they come first among the text negatives, then the
    captions of the mined pairs. A pair with fewer negatives in a direction is padded with its own caption or
    image, masked out of that direction's denominator (``Sample.negative_mask``: texts' mask, images' mask)."""

    def __init__(self, dataset: Dataset, pairs: ShardDataset, folder: str | Path, per_sample: int):
        from cafe.mining.shards import read_negatives, read_swap_captions, read_version

        version = read_version(folder)
        if version["pairs_data_version"] != pairs.version:
            raise ValueError(f"train.negatives {folder} was mined from pairs {version['pairs_data_version'][:12]}, "
                             f"not {pairs.folder} ({pairs.version[:12]}): run `cafe mine` on these pairs")
        self.dataset, self.pairs, self.per_sample = dataset, pairs, per_sample
        self.version = version["sha256"]
        ids = pairs.ids()
        index = {pid: i for i, pid in enumerate(ids)}
        mined = read_negatives(folder, pairs.split)
        missing = [pid for pid in ids if pid not in mined]
        if missing:
            raise ValueError(f"train.negatives {folder}: no entry for pair {missing[0]!r} ({len(missing)} missing); "
                             "mine again")
        swaps = read_swap_captions(folder, pairs.split)
        captions = pairs.captions_column()
        # per pair: its negative texts (swapped captions first, then the mined pairs' captions not among them)
        # and the indices of its negative images, resolved once so an item decodes only the images it needs
        self.texts, self.images = [], []
        for pid in ids:
            own = [text for _, text in swaps.get(pid, [])]
            mined_texts = [captions[index[j]] for j in mined[pid][0][:per_sample]]
            self.texts.append((own + [c for c in mined_texts if c not in own])[:per_sample])
            self.images.append([index[j] for j in mined[pid][1][:per_sample]])
        self.captions = captions

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample, image = self.dataset[index]
        texts, images, n = self.texts[index], self.images[index], self.per_sample
        captions = tuple(texts + [self.captions[index]] * (n - len(texts)))
        pictures = tuple(self.pairs[j][1] for j in images) + (image,) * (n - len(images))
        mask = (tuple(i < len(texts) for i in range(n)), tuple(i < len(images) for i in range(n)))
        return replace(sample, negative_captions=captions, negative_images=pictures, negative_mask=mask), image


def pairs_dataset(params, split: str = "train") -> Dataset:
    """The training pairs ``params.train.data`` names, with the configured caption prompt and switch; with
    ``train.lm_source: replay`` their language samples come from ``train.replay`` (:mod:`cafe.data.replay`);
    with ``train.negatives`` the train split's items carry their mined hard negatives (:class:`WithNegatives`)."""
    pairs = ShardDataset(params.train.data, split, params.prompts.caption, params.train.captions)
    dataset = ReplayDataset(pairs, params.train.replay) if params.train.lm_source == "replay" else pairs
    if params.train.negatives and split == "train":
        return WithNegatives(dataset, pairs, params.train.negatives, params.train.negatives_per_sample)
    return dataset



