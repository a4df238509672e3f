"""Gradient caching: peak memory and samples/s of one CAFe step (L_lm + L_con over the whole batch) for
contrastive batches of 64 to 1024, with and without caching, on the tiny model in one process.

Usage: python benchmarks/grad_cache.py [--batches 64 128 256 512 1024] [--chunk 32] [--out docs/results/grad_cache.json]

Each (batch, caching) runs in its own process, so its peak resident set (``ru_maxrss``) is its own; the table
also gives the growth over the process's resident set just before the step (activations, gradients and the
cached embeddings). Without caching the activations of the whole batch are alive at once; with caching only
one chunk's are, plus the batch's embeddings. A warm-up step on a small batch runs first; the timed step is
the second. Images are random, captions distinct: the step's cost does not depend on what they show.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder would come first on sys.path and benchmarks/peft.py would shadow peft
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks._results import default_out, write_result  # noqa: E402


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(batch: int, chunk: int) -> dict:
    """One configuration, in this process: a warm-up step, then one timed step of ``batch`` samples."""
    import numpy as np
    import torch
    from PIL import Image

    from cafe.config import Params
    from cafe.data import shapes
    from cafe.distributed import DistEnv
    from cafe.models import build_tiny
    from cafe.training.step import loss_terms
    from cafe.training.strategy import DDPStrategy

    torch.manual_seed(0)
    p = Params()
    p.synth.image_size, p.model.tiny.patch_size = 96, 32  # the embedded default's model (params.yaml)
    adapter = build_tiny(shapes.vocabulary_corpus(), 96, p.model.tiny, p.prompts, p.model, seed=0)
    cfg = p.train.model_copy(update={"grad_cache_chunk": chunk, "batch_size": batch})
    strategy = DDPStrategy(adapter.model, cfg, DistEnv(), total_steps=10)
    rng = np.random.default_rng(0)
    colours, things = list(shapes.COLOURS), list(shapes.SHAPES)

    def make(n):
        images = [Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(n)]
        captions = [f"{colours[i % len(colours)]} {things[(i // len(colours)) % len(things)]} {shapes.NUMBER_WORDS[1 + i % 3]}"
                    f" {i}" for i in range(n)]
        return {"images": images, "prompts": [p.prompts.caption] * n, "answers": captions, "captions": captions}

    strategy.step(loss_terms(adapter, make(8), cfg.model_copy(update={"grad_cache_chunk": 0})))
    batch_data = make(batch)
    before = _rss_mib()
    start = time.perf_counter()
    strategy.step(loss_terms(adapter, batch_data, cfg))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"batch": batch, "chunk": chunk, "cached": chunk > 0, "seconds": seconds, "samples_per_s": batch / seconds,
            "peak_rss_mib": peak, "step_growth_mib": max(0.0, peak - before)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--out", default=default_out("grad_cache"))
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # batch chunk: child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return

    from rich.console import Console
    from rich.table import Table
    from tqdm.auto import tqdm

    configs = [(b, c) for b in args.batches for c in (0, args.chunk)]
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    for batch, chunk in tqdm(configs, desc="configs", unit="run"):
        proc = subprocess.run([sys.executable, __file__, "--one", str(batch), str(chunk)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"batch {batch} chunk {chunk} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    base = {r["cached"]: r for r in rows if r["batch"] == min(args.batches)}
    table = Table(title=f"one CAFe step, tiny model, 1 process ({env['OMP_NUM_THREADS']} thread), chunk {args.chunk}")
    for col in ("batch", "caching", "samples/s", "peak RSS MiB", "x batch 64", "step growth MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        r["peak_vs_smallest"] = r["peak_rss_mib"] / base[r["cached"]]["peak_rss_mib"]
        table.add_row(str(r["batch"]), "yes" if r["cached"] else "no", f"{r['samples_per_s']:.1f}",
                      f"{r['peak_rss_mib']:.0f}", f"{r['peak_vs_smallest']:.2f}", f"{r['step_growth_mib']:.0f}")
    Console().print(table)
    cached = [r for r in rows if r["cached"]]
    ok = all(r["peak_vs_smallest"] <= 1.5 for r in cached)
    print(f"with caching, peak RSS stays within 1.5x of batch {min(args.batches)}: {'yes' if ok else 'NO'} "
          f"(largest ratio {max(r['peak_vs_smallest'] for r in cached):.2f})")
    write_result(args.out, {"chunk": args.chunk, "threads": env["OMP_NUM_THREADS"], "rows": rows,
                            "cached_within_1_5x": ok})


if __name__ == "__main__":
    main()
