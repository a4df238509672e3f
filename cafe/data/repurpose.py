"""`cafe repurpose`: instruction data -> (image, short caption, long caption) Parquet shards (paper 4.1).

The instruction is dropped and the answer kept as the long caption; the short caption is cut from it by
``repurpose.short_caption``. Every input record ends in exactly one place: a train/val shard, the
duplicates count, the filtered count (kind not kept, sampled out by weight or count), or
``quarantine.jsonl`` with a reason code; ``stats.json`` shows ``input == kept + duplicates + filtered +
quarantined``. No single record stops the stage: every per-record failure, foreseen or not, is a quarantine
line (``unexpected`` names the exception); a damaged part of a file quarantines the records it held. The
output folder is written under a temporary name, removed if the stage fails, and refused up front if it
equals, contains or lies inside an input file or image root (it is replaced wholesale).

Reading, filtering, deduplication and writing run in this process, in input order; the caption and image
rules run on ``workers`` processes over batches of records, at most a few batches in flight, and come back
in order, so the shards are byte-identical for any number of workers and memory stays flat (the
deduplication index grows by about 60 bytes per kept record).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from cafe.config import ImageRulesConfig, RepurposeConfig, ShortCaptionConfig
from cafe.data.captions import clean_answer, short_caption, usable
from cafe.data.images import ImageRejected, clean_image
from cafe.data.shards import DATA_VERSION, ShardWriter, write_data_version
from cafe.data.sources import InputError, Item, Record, Rejected, load_sources, read_source, source_files
from cafe.processes import short_socket_dir

BATCH = 64
REASONS = {
    "bad_json": "a line or array element that is not valid JSON",
    "not_an_object": "a JSON value that is not an object",
    "missing_field": "id, image or conversations missing",
    "wrong_type": "a field of the wrong type",
    "no_answer": "no gpt/assistant turn",
    "empty_answer": "nothing left of the answer after removing <image> and chat debris",
    "image_path_escape": "an absolute path, '..' or a symlink leaving the image root (never opened)",
    "image_missing": "no such image file",
    "image_corrupt": "not an image, or undecodable",
    "image_truncated": "a truncated image file",
    "image_bomb": "more pixels in the header than images.max_pixels (decompression bomb)",
    "image_too_large": "larger than images.max_side or images.max_file_bytes",
    "image_too_small": "smaller than images.min_side",
    "bad_encoding": "text that does not decode in the file's encoding, or a lone surrogate escape",
    "corrupt_row_group": "a Parquet row group that cannot be read (each of its rows, with its row number)",
    "corrupt_row": "a Parquet row that cannot be converted",
    "unreadable_rest": "the rest of a file after a read error (one line for what could not be read)",
    "caption_too_long": "a long caption of more than repurpose.max_caption_chars characters",
    "unexpected": "anything unforeseen: the message names the exception",
}


class RepurposeError(RuntimeError):
    """The stage failed: the input is unreadable or the quarantine share is above the limit."""


@dataclass(frozen=True)
class Rules:
    short: ShortCaptionConfig
    images: ImageRulesConfig
    phash: bool
    max_caption_chars: int = 4000


@dataclass
class Kept:
    row: dict
    key: str  # sha256 of image content + long caption: exact-duplicate key and split hash
    phash: int | None


def process(item: Record, rules: Rules) -> Kept | Rejected:
    """The caption and image rules for one record (runs on a worker); never raises."""
    if isinstance(item, Rejected):
        return item
    try:
        return _process(item, rules)
    except Exception as err:  # noqa: BLE001 - the catch-all reason, naming the exception
        return Rejected(item.source, item.location, "unexpected", f"{type(err).__name__}: {str(err)[:200]}", item.id)


def _process(item: Item, rules: Rules) -> Kept | Rejected:
    def reject(reason: str, message: str) -> Rejected:
        return Rejected(item.source, item.location, reason, message, item.id)

    if item.answer is None:
        return reject("no_answer", "the conversation has no gpt/assistant turn")
    long = clean_answer(item.answer)
    if not usable(long):
        return reject("empty_answer", f"answer {item.answer[:80]!r} is empty after removing <image> and chat debris")
    if len(long) > rules.max_caption_chars:
        return reject("caption_too_long", f"the long caption has {len(long)} characters; "
                                          f"repurpose.max_caption_chars = {rules.max_caption_chars}")
    try:
        img = clean_image(rules.images, data=item.image_bytes, root=item.image_root, relative=item.image_path)
    except ImageRejected as err:
        return reject(err.reason, f"{item.image_path or 'image bytes'}: {err}")
    phash = None
    if rules.phash:
        import imagehash

        phash = int(str(imagehash.phash(img.image)), 16)
    key = hashlib.sha256(f"{img.sha256}\0{long}".encode()).hexdigest()
    row = {"id": item.id, "source": item.source, "kind": item.kind, "short_caption": short_caption(long, rules.short),
           "long_caption": long, "image": img.data, "image_sha256": img.sha256, "width": img.width,
           "height": img.height}
    return Kept(row, key, phash)


def _process_batch(batch: list[Record], rules: Rules) -> list[Kept | Rejected]:
    return [process(item, rules) for item in batch]


def _batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def ordered_map(fn: Callable, tasks: Iterable, workers: int, in_flight: int) -> Iterator:
    """``map(fn, tasks)`` over ``workers`` processes, results in task order, at most ``in_flight`` tasks
    submitted and unfinished (the input is not read ahead further)."""
    if workers <= 1:
        yield from map(fn, tasks)
        return
    short_socket_dir()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # workers fork from a server that imported this module once
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(fn, (task,)))
            if len(pending) >= in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _unit(text: str) -> float:
    """A stable number in [0, 1) from a string."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


@dataclass
class _Counts:
    input: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)  # by split
    duplicates: Counter = field(default_factory=Counter)  # exact / near
    filtered: Counter = field(default_factory=Counter)  # kind / sampled_out / over_count
    quarantined: Counter = field(default_factory=Counter)  # by reason
    per_source: dict = field(default_factory=dict)

    def source(self, name: str) -> Counter:
        return self.per_source.setdefault(name, Counter())


def _selected(cfg: RepurposeConfig, counts: _Counts) -> Iterator[Record]:
    """Every record of every source, minus the ones the mixture filters out (kinds, weight, count)."""
    for source in load_sources(cfg):
        taken = 0
        per = counts.source(source.name)
        for rec in read_source(source, on_error=_unreadable_rest):
            counts.input["records"] += 1
            per["input"] += 1
            if isinstance(rec, Item):
                reason = None
                if source.keep_kinds and rec.kind is not None and rec.kind not in source.keep_kinds:
                    reason = "kind"
                elif source.weight < 1 and _unit(f"{source.name}\0{rec.id}") >= source.weight:
                    reason = "sampled_out"
                elif source.count and taken >= source.count:
                    reason = "over_count"
                if reason:
                    counts.filtered[reason] += 1
                    per["filtered"] += 1
                    continue
                taken += 1
            yield rec


def _unreadable_rest(source: str, path: Path, err: Exception) -> Rejected:
    return Rejected(source, str(path), "unreadable_rest", f"reading stopped here: {type(err).__name__}: "
                                                          f"{str(err)[:200]}; the records before were read")


def check_output(cfg: RepurposeConfig) -> None:
    """Refuse an output folder (or its temporary sibling) that equals, contains or lies inside an input file or
    image root: the stage deletes and replaces it, inputs included. Checked before anything is written."""
    out = Path(cfg.out).resolve()
    if out.exists() and not out.is_dir():
        raise RepurposeError(f"repurpose.out {cfg.out} is a file; the output is a folder")
    outputs = (out, out.with_name(f".{out.name}.tmp"))
    try:
        sources = load_sources(cfg)
        inputs = [(f"input {p}", p) for s in sources for p in source_files(s)]
    except InputError as err:
        raise RepurposeError(f"input unreadable: {err}") from None
    inputs += [(f"image root {s.image_root}", Path(s.image_root)) for s in sources if s.image_root]
    if cfg.mixture:
        inputs.append((f"mixture {cfg.mixture}", Path(cfg.mixture)))
    for what, path in inputs:
        real = path.resolve()
        for o in outputs:
            relation = ("equals" if o == real else "contains" if real.is_relative_to(o)
                        else "lies inside" if o.is_relative_to(real) else None)
            if relation:
                raise RepurposeError(f"repurpose.out {cfg.out} ({o}) {relation} the {what}: the stage replaces its "
                                     "output folder, so it must be outside every input; choose another folder")


class _NearDuplicates:
    """pHash index: a 64-bit hash is a near duplicate of a kept one within ``distance`` bits; by pigeonhole
    two such hashes share one of ``distance + 1`` bands, so only those candidates are compared."""

    def __init__(self, distance: int):
        self.distance, self.bands = distance, distance + 1
        self.width = 64 // self.bands
        self.index: list[dict[int, list[int]]] = [{} for _ in range(self.bands)]

    def _keys(self, h: int) -> list[int]:
        mask = (1 << self.width) - 1
        return [(h >> (b * self.width)) & mask for b in range(self.bands)]

    def seen(self, h: int) -> bool:
        keys = self._keys(h)
        for band, key in zip(self.index, keys):
            if any(bin(h ^ other).count("1") <= self.distance for other in band.get(key, ())):
                return True
        for band, key in zip(self.index, keys):
            band.setdefault(key, []).append(h)
        return False


def repurpose(cfg: RepurposeConfig, console=None) -> dict:
    """Run the stage; returns ``stats.json``'s content. Raises :class:`RepurposeError` (after writing the
    shards, stats and quarantine, but no ``data_version.json``) when the quarantine share is above
    ``cfg.max_quarantine_share``, and :class:`RepurposeError` at once when the input cannot be read."""
    start = time.perf_counter()
    workers = cfg.workers or os.cpu_count() or 1
    check_output(cfg)
    out = Path(cfg.out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.is_symlink():  # a link planted under the temporary name: removed, never followed
        tmp.unlink()
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        return _run(cfg, out, tmp, workers, start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # on success it was renamed to ``out``; on failure nothing stays


def _run(cfg: RepurposeConfig, out: Path, tmp: Path, workers: int, start: float) -> dict:
    writers = {split: ShardWriter(tmp / split, cfg.records_per_shard, cfg.max_shard_bytes, cfg.row_group_rows)
               for split in ("train", "val")}
    counts = _Counts()
    exact: set[int] = set()
    near = _NearDuplicates(cfg.near_duplicate_distance) if cfg.near_duplicates else None
    rules = Rules(cfg.short_caption, cfg.images, cfg.near_duplicates, cfg.max_caption_chars)
    bar = tqdm(desc="repurpose", unit=" rec", disable=not cfg.progress, dynamic_ncols=True, mininterval=0.5)
    try:
        with (tmp / "quarantine.jsonl").open("w") as quarantine:
            results = ordered_map(partial(_process_batch, rules=rules), _batches(_selected(cfg, counts), BATCH),
                                  workers, in_flight=4 * workers)
            for batch in results:
                for result in batch:
                    _collect(result, counts, exact, near, writers, quarantine, cfg.val_fraction)
                bar.update(counts.input["records"] - bar.n)
    except InputError as err:
        raise RepurposeError(f"input unreadable: {err}") from None
    finally:
        bar.close()
    shards = {split: w.close() for split, w in writers.items()}
    stats = _stats(counts, shards, workers, time.perf_counter() - start, cfg)
    over = stats["quarantine_share"] > cfg.max_quarantine_share
    if not over:
        stats["data_version"] = write_data_version(tmp)["sha256"]
    (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    # the config the shards were made with, next to them (lineage)
    (tmp / "repurpose.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    if over:
        raise RepurposeError(
            f"{stats['quarantined']} of {stats['input'] - stats['filtered']} records quarantined "
            f"({stats['quarantine_share']:.1%}) exceeds repurpose.max_quarantine_share = {cfg.max_quarantine_share:.1%}; "
            f"see {out / 'quarantine.jsonl'} (no {DATA_VERSION} written)")
    return stats


def _collect(result: Kept | Rejected, counts: _Counts, exact: set[int], near: _NearDuplicates | None,
             writers: dict[str, ShardWriter], quarantine, val_fraction: float) -> None:
    if isinstance(result, Rejected):
        counts.quarantined[result.reason] += 1
        counts.source(result.source)["quarantined"] += 1
        quarantine.write(json.dumps(result.to_json()) + "\n")
        return
    per = counts.source(result.row["source"])
    digest = int(result.key[:16], 16)
    if digest in exact:
        counts.duplicates["exact"] += 1
        per["duplicates"] += 1
        return
    exact.add(digest)
    if near is not None and near.seen(result.phash):
        counts.duplicates["near"] += 1
        per["duplicates"] += 1
        return
    split = "val" if int(result.key[16:32], 16) / 2**64 < val_fraction else "train"
    writers[split].add(result.row)
    counts.kept[split] += 1
    per["kept"] += 1


def _stats(counts: _Counts, shards: dict, workers: int, seconds: float, cfg: RepurposeConfig) -> dict:
    n = counts.input["records"]
    kept, dup = sum(counts.kept.values()), sum(counts.duplicates.values())
    filt, quar = sum(counts.filtered.values()), sum(counts.quarantined.values())
    considered = n - filt
    return {
        "input": n, "kept": kept, "duplicates": dup, "filtered": filt, "quarantined": quar,
        "identity": f"input {n} == kept {kept} + duplicates {dup} + filtered {filt} + quarantined {quar}",
        "accounted": n == kept + dup + filt + quar,
        "quarantine_share": quar / considered if considered else 0.0,
        "max_quarantine_share": cfg.max_quarantine_share,
        "kept_by_split": {s: counts.kept[s] for s in ("train", "val")},
        "duplicates_by_kind": dict(sorted(counts.duplicates.items())),
        "filtered_by_reason": dict(sorted(counts.filtered.items())),
        "quarantined_by_reason": dict(sorted(counts.quarantined.items())),
        "sources": {name: {k: c[k] for k in ("input", "kept", "duplicates", "filtered", "quarantined")}
                    for name, c in counts.per_source.items()},
        "shards": shards, "workers": workers, "seconds": round(seconds, 3),
        "records_per_s": round(n / seconds, 1) if seconds > 0 else 0.0,
    }


def print_summary(stats: dict, out: str, console) -> None:
    from rich.table import Table

    table = Table(title=f"repurpose -> {out}  ({stats['records_per_s']:.0f} records/s, {stats['workers']} workers)")
    table.add_column("records")
    table.add_column("count", justify="right")
    table.add_row("input", str(stats["input"]))
    for split, n in stats["kept_by_split"].items():
        table.add_row(f"kept: {split}", str(n))
    for label, group in (("duplicates", "duplicates_by_kind"), ("filtered", "filtered_by_reason"),
                         ("quarantined", "quarantined_by_reason")):
        for reason, n in stats[group].items():
            table.add_row(f"{label}: {reason}", str(n))
    console.print(table)
    mark = "[green]✓[/green]" if stats["accounted"] else "[red]✗[/red]"
    console.print(f"{mark} {stats['identity']}; quarantine share {stats['quarantine_share']:.2%}")
