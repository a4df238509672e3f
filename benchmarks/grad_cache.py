"""Gradient caching: peak memory and samples/s of one CAFe step (L_lm + L_con over the whole batch) for
contrastive batches of 64 to 1024, with and without caching, on the tiny model in one process.

Usage: python benchmarks/grad_cache.py [--batches 64 128 256 512 1024] [--chunk 32] [--out docs/results/grad_cache.json]
       python benchmarks/grad_cache.py --zero3 [--batches 64 256 1024] [--chunk 16] [--out docs/results/grad_cache_zero3.json]

Each (batch, caching) runs in its own process, so its peak resident set (``ru_maxrss``) is its own; the table
also gives the growth over the process's resident set just before the step (activations, gradients and the
cached embeddings). Without caching the activations of the whole batch are alive at once; with caching only
one chunk's are, plus the batch's embeddings. A warm-up step on a small batch runs first; the timed step is
the second. Images are random, captions distinct: the step's cost does not depend on what they show.

``--zero3``: the same step under DeepSpeed ZeRO-3 (``configs/deepspeed/zero3.json``) on 2 gloo ranks of one
machine, on a model with LLaVA-OneVision-0.5B's layer widths (:data:`WIDTHS_0_5B`: Qwen2 896 wide, 14 heads,
2 KV heads, intermediate 4864; SigLIP 1152 wide, 16 heads) at reduced depth (1 LM, 1 vision layer) and short
sequences (96 px images in 32 px patches: 9 image tokens; the shapes world's vocabulary), ``--batches`` the
global batch (half per rank). Each configuration starts two fresh ranks; after a warm-up step (which allocates
AdamW's partitioned state) each rank samples its resident set every 2 ms during the timed step (with glibc's
mmap threshold fixed, so freed blocks go back): the growth is the peak minus the level just before the step.
A run without caching whose extrapolated growth (from the previous batch) would not fit in the memory
available is not started and is reported as skipped.
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


WIDTHS_0_5B = {"vision_hidden": 1152, "vision_layers": 1, "vision_heads": 16, "patch_size": 32, "text_hidden": 896,
               "text_layers": 1, "text_heads": 14, "text_kv_heads": 2, "text_intermediate": 4864}


def _zero3_rank(rank: int, port: int, global_batch: int, chunk: int, out: str) -> None:
    """One rank of a ZeRO-3 configuration: a warm-up step of 8 samples, then the measured step."""
    import torch
    import torch.distributed as dist

    from benchmarks.shared_prefix import PeakMemory, batch_of
    from cafe.config import Params
    from cafe.data import shapes
    from cafe.distributed import DistEnv
    from cafe.models import build_tiny
    from cafe.training.step import loss_terms
    from cafe.training.strategy import DeepSpeedStrategy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    env = DistEnv(rank=rank, world_size=2)
    p = Params()
    p.synth.image_size = 96
    p.model.tiny = p.model.tiny.model_copy(update=WIDTHS_0_5B)
    adapter = build_tiny(shapes.vocabulary_corpus(), 96, p.model.tiny, p.prompts, p.model, seed=0)
    per_rank = global_batch // 2
    cfg = p.train.model_copy(update={"strategy": "deepspeed", "deepspeed_config": str(ROOT / "configs/deepspeed/zero3.json"),
                                     "batch_size": per_rank, "grad_cache_chunk": chunk})
    strategy = DeepSpeedStrategy(adapter.model, cfg, env, total_steps=10)
    warm = cfg.model_copy(update={"grad_cache_chunk": 0})
    strategy.step(loss_terms(adapter, batch_of(p, adapter, 8), warm, strategy.backward))
    data = batch_of(p, adapter, global_batch)
    mine = {k: v[rank * per_rank:(rank + 1) * per_rank] for k, v in data.items()}
    del data
    import gc
    gc.collect()
    dist.barrier()
    before = _rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    with PeakMemory(torch.device("cpu")) as peak:
        strategy.step(loss_terms(adapter, mine, cfg, strategy.backward))
    row = {"rank": rank, "rss_before_mib": before, "step_growth_mib": peak.peak_mib,
           "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    Path(out, f"rank{rank}.json").write_text(json.dumps(row))
    dist.barrier()
    dist.destroy_process_group()


def zero3(batches: list[int], chunk: int, out: str) -> None:
    """The ZeRO-3 table (see the module docstring) and its JSON at ``out``."""
    import socket
    import tempfile

    import torch.multiprocessing as mp
    from rich.console import Console
    from rich.table import Table

    from cafe.training.strategy import build_deepspeed_ops

    # read by each rank's interpreter at start (spawn): large freed blocks go back to the system at once
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "262144")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONPATH"] = str(ROOT)
    build_deepspeed_ops()  # compiled once here, not in the ranks' time
    rows = []
    for batch in batches:
        for cached in (True, False):
            previous = [r for r in rows if r["cached"] == cached and not r.get("skipped")]
            if previous and not cached:
                last = previous[-1]
                need = 2 * last["step_growth_mib_max"] * batch / last["global_batch"] / 1024
                with open("/proc/meminfo") as fh:
                    avail = int(next(line for line in fh if line.startswith("MemAvailable")).split()[1]) / 2**20
                if need > 0.7 * avail:
                    rows.append({"global_batch": batch, "cached": cached, "skipped": True,
                                 "reason": f"needs ~{need:.1f} GiB for 2 ranks, {avail:.1f} GiB available"})
                    print(rows[-1], flush=True)
                    continue
            folder = tempfile.mkdtemp(prefix="cafe-zero3-")
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            mp.spawn(_zero3_rank, args=(port, batch, chunk if cached else 0, folder), nprocs=2, join=True)
            ranks = [json.loads(Path(folder, f"rank{r}.json").read_text()) for r in range(2)]
            rows.append({"global_batch": batch, "cached": cached, "chunk": chunk if cached else 0, "ranks": ranks,
                         "step_growth_mib_max": max(r["step_growth_mib"] for r in ranks),
                         "seconds": max(r["seconds"] for r in ranks)})
            print({k: v for k, v in rows[-1].items() if k != "ranks"}, flush=True)
    smallest = min(batches)
    table = Table(title=f"one CAFe step, DeepSpeed ZeRO-3, 2 ranks, 0.5B layer widths (1 LM + 1 vision layer), "
                        f"chunk {chunk} per rank")
    for col in ("global batch", "caching", "growth rank 0 MiB", "growth rank 1 MiB", f"x batch {smallest}", "step s"):
        table.add_column(col, justify="right")
    for r in rows:
        if r.get("skipped"):
            table.add_row(str(r["global_batch"]), "yes" if r["cached"] else "no", "skipped", r["reason"], "", "")
            continue
        base = next(x for x in rows if x["cached"] == r["cached"] and x["global_batch"] == smallest)
        r["growth_vs_smallest"] = r["step_growth_mib_max"] / base["step_growth_mib_max"]
        table.add_row(str(r["global_batch"]), "yes" if r["cached"] else "no",
                      *[f"{x['step_growth_mib']:.0f}" for x in r["ranks"]], f"{r['growth_vs_smallest']:.2f}",
                      f"{r['seconds']:.0f}")
    Console().print(table)
    cached = [r for r in rows if r["cached"] and not r.get("skipped")]
    largest = max(cached, key=lambda r: r["global_batch"])
    ok = largest["growth_vs_smallest"] <= 1.5
    print(f"with caching, growth at global batch {largest['global_batch']} is {largest['growth_vs_smallest']:.2f}x "
          f"the growth at {smallest} (target <= 1.5x): {'met' if ok else 'NOT met'}")
    write_result(out, {"zero_stage": 3, "ranks": 2, "model": WIDTHS_0_5B, "chunk_per_rank": chunk,
                       "threads_per_rank": os.environ["OMP_NUM_THREADS"], "rows": rows,
                       "cached_growth_within_1_5x": ok})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--out", default=default_out("grad_cache"))
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # batch chunk: child process
    ap.add_argument("--zero3", action="store_true", help="DeepSpeed ZeRO-3 on 2 ranks, 0.5B layer widths")
    args = ap.parse_args()
    if args.zero3:
        batches = args.batches if args.batches != ap.get_default("batches") else [64, 256, 1024]
        chunk = args.chunk if args.chunk != ap.get_default("chunk") else 16
        out = args.out if args.out != ap.get_default("out") else default_out("grad_cache_zero3")
        zero3(batches, chunk, out)
        return
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
