"""Hard-negative shards, versioned like the pairs, and reading them back for training.

Layout of ``mine.out`` (beside the pairs folder, e.g. ``data/negatives`` next to ``data/pairs``)::

    train/part-00000.parquet   rows: id, text_negatives [ids], text_scores, image_negatives [ids], image_scores
    data_version.json          {"sha256", "files", "rows", "pairs_data_version", "model": {...}}
    summary.json               what each rule dropped, per direction; search index and recall; timings
    mine.json                  the mine config (lineage)

``text_negatives`` of a pair are the pair ids whose captions are hard negatives for its image (image->text);
``image_negatives`` those whose images are hard negatives for its caption (text->image), hardest first.
Attribute-swap negatives (``mine.source: attribute_swaps | both``, :mod:`cafe.mining.swaps`) add two columns,
``swap_captions`` (the rule-made negative captions of the pair) and ``swap_kinds`` (``replace_colour``, ...);
their ``text_negatives`` / ``image_negatives`` are the pairs whose caption equals one of them.
The folder is written under a temporary name and renamed, so it is complete or absent; its ``sha256`` is the
content hash of the shards (:func:`cafe.data.shards.write_data_version`), and ``pairs_data_version`` ties it
to the pairs it was mined from: training refuses negatives mined from other pairs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cafe.data.shards import DATA_VERSION, filesystem, write_data_version

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text_negatives", pa.list_(pa.string())), ("text_scores", pa.list_(pa.float32())),
    ("image_negatives", pa.list_(pa.string())), ("image_scores", pa.list_(pa.float32())),
])
SWAP_FIELDS = [("swap_captions", pa.list_(pa.string())), ("swap_kinds", pa.list_(pa.string()))]
ROWS_PER_SHARD = 100_000


def _lists(ids: list[str], idx: np.ndarray, scores: np.ndarray) -> tuple[list[list[str]], list[list[float]]]:
    names, values = [], []
    for row_i, row_s in zip(idx, scores):
        keep = row_i >= 0
        names.append([ids[j] for j in row_i[keep]])
        values.append([float(s) for s in row_s[keep]])
    return names, values


def write_negatives(out: str | Path, split: str, ids: list[str], text: tuple[np.ndarray, np.ndarray],
                    image: tuple[np.ndarray, np.ndarray], pairs_version: str, model: dict | None, summary: dict,
                    config: dict, swaps: list[list[tuple[str, str]]] | None = None) -> dict:
    """Write the folder atomically; ``text`` / ``image``: (pair indices ``[n, k]`` with -1 padding, scores) of
    each direction; ``swaps``: each pair's attribute-swap captions as ``(kind, text)``. Returns the data
    version written."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / split).mkdir(parents=True)
    try:
        text_ids, text_scores = _lists(ids, *text)
        image_ids, image_scores = _lists(ids, *image)
        schema = SCHEMA if swaps is None else pa.schema([*SCHEMA, *SWAP_FIELDS])
        extra = {} if swaps is None else {"swap_captions": [[t for _, t in row] for row in swaps],
                                          "swap_kinds": [[kind for kind, _ in row] for row in swaps]}
        for shard, lo in enumerate(range(0, len(ids), ROWS_PER_SHARD)):
            hi = lo + ROWS_PER_SHARD
            table = pa.Table.from_pydict({"id": ids[lo:hi], "text_negatives": text_ids[lo:hi],
                                          "text_scores": text_scores[lo:hi], "image_negatives": image_ids[lo:hi],
                                          "image_scores": image_scores[lo:hi],
                                          **{name: col[lo:hi] for name, col in extra.items()}}, schema=schema)
            pq.write_table(table, tmp / split / f"part-{shard:05d}.parquet", compression="zstd")
        version = write_data_version(tmp)
        version.update({"kind": "hard_negatives", "source": config.get("source", "model"),
                        "pairs_data_version": pairs_version, "model": model})
        (tmp / DATA_VERSION).write_text(json.dumps(version, indent=1) + "\n")
        (tmp / "summary.json").write_text(json.dumps({**summary, "data_version": version["sha256"]}, indent=1) + "\n")
        (tmp / "mine.json").write_text(json.dumps(config, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version


def read_version(folder: str | Path) -> dict:
    """The negatives' ``data_version.json`` (a local folder or ``s3://`` URI); a missing or foreign file is an
    error saying what to run."""
    fs, root = filesystem(str(folder))
    where = f"{str(folder).rstrip('/')}/{DATA_VERSION}"
    try:
        with fs.open_input_stream(f"{root}/{DATA_VERSION}") as fh:
            version = json.loads(fh.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{where} is missing: run `cafe mine` (it is written only when mining "
                                "succeeds)") from None
    if not isinstance(version, dict) or version.get("kind") != "hard_negatives":
        raise ValueError(f"{where}: not a hard-negatives version (train.negatives must name `cafe mine`'s output)")
    return version


def is_negatives(folder: str | Path) -> bool:
    """Whether ``folder`` holds mined negatives (a pipeline's mine step leaves an empty folder when it is off)."""
    try:
        read_version(folder)
    except (FileNotFoundError, ValueError):
        return False
    return True


def _shards(folder: str | Path, split: str, columns: list[str]):
    """Each shard of ``split`` as a dict of ``columns`` (local or ``s3://``); shards lacking one are skipped."""
    fs, root = filesystem(str(folder))
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{split}", allow_not_found=True))
    for path in sorted(i.path for i in infos if i.path.endswith(".parquet")):
        if set(columns) <= set(pq.read_schema(path, filesystem=fs).names):
            yield pq.read_table(path, columns=columns, filesystem=fs).to_pydict()


def read_negatives(folder: str | Path, split: str = "train") -> dict[str, tuple[list[str], list[str]]]:
    """``pair id -> (text negative ids, image negative ids)``, hardest first (local or ``s3://``)."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for cols in _shards(folder, split, ["id", "text_negatives", "image_negatives"]):
        out.update(zip(cols["id"], zip(cols["text_negatives"], cols["image_negatives"])))
    return out


def read_swap_captions(folder: str | Path, split: str = "train") -> dict[str, list[tuple[str, str]]]:
    """``pair id -> [(kind, caption)]``: the attribute-swap negative captions (empty without the columns)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for cols in _shards(folder, split, ["id", "swap_kinds", "swap_captions"]):
        out.update((pid, list(zip(kinds, texts))) for pid, kinds, texts in
                   zip(cols["id"], cols["swap_kinds"], cols["swap_captions"]))
    return out
