"""`cafe repurpose` throughput and memory: records/s and peak resident memory for 10K and 100K synthetic
records with 1 and 2 workers, each run in its own process. The target: the peak for 100K within 1.3x of
the peak for 10K (memory must not grow with the dataset).

Usage: python benchmarks/repurpose.py [--sizes 10000 100000] [--workers 1 2] [--out docs/results/repurpose.json]

The synthetic data: JSON lines naming 1000 distinct 64 px PNG images (every record a different caption,
so nothing is a duplicate), 6% broken records (bad JSON, empty answers, missing images) to exercise the
quarantine path. Peak memory is sampled from /proc for the whole process tree (the stage's process, the
forkserver and the workers) every 20 ms; the stage's own process peak is its ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import default_out, write_result  # noqa: E402

IMAGES = 1000


def make_data(work: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    images = work / "root" / "images"
    if not images.is_dir():
        images.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(IMAGES):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB").save(images / f"{i}.png")
    path = work / f"records-{n}.jsonl"
    if path.is_file():
        return path
    with path.open("w") as fh:
        for i in range(n):
            if i % 50 == 7:
                fh.write('{"id": "broken", "conversations": [\n')
                continue
            answer = "<image>" if i % 50 == 19 else f"A synthetic picture number {i}. It shows noise in many colours."
            image = f"images/missing-{i}.png" if i % 50 == 31 else f"images/{i % IMAGES}.png"
            fh.write(json.dumps({"id": f"r{i}", "image": image, "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": answer}]}) + "\n")
    return path


def _tree_rss_kb(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, ppid = int(entry), int(fields["PPid"])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def one_run(data: Path, workers: int, out: Path) -> dict:
    """Repurpose in this process; returns the measurement."""
    from cafe.config import RepurposeConfig
    from cafe.data.repurpose import repurpose

    peak = {"tree": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["tree"] = max(peak["tree"], _tree_rss_kb(os.getpid()))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cfg = RepurposeConfig(input=str(data), image_root=str(data.parent / "root"), keep_kinds=[], out=str(out),
                          workers=workers, progress=False, val_fraction=0.01, max_quarantine_share=0.1)
    start = time.perf_counter()
    stats = repurpose(cfg)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"records": stats["input"], "workers": workers, "seconds": seconds,
            "records_per_s": stats["input"] / seconds, "kept": stats["kept"], "quarantined": stats["quarantined"],
            "accounted": stats["accounted"],
            "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_tree_mb": peak["tree"] / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", default="/tmp/cafe-bench-repurpose")
    ap.add_argument("--out", default=default_out("repurpose"))
    ap.add_argument("--one", nargs=3, metavar=("DATA", "WORKERS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one[0]), int(args.one[1]), Path(args.one[2]))))
        return

    from rich.console import Console
    from rich.table import Table

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        data = make_data(work, n)
        for w in args.workers:
            proc = subprocess.run([sys.executable, __file__, "--one", str(data), str(w), str(work / f"out-{n}-{w}")],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode:
                sys.exit(f"run {n} x {w} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{n} records, {w} workers: {rows[-1]['records_per_s']:.0f} records/s", file=sys.stderr)
    table = Table(title=f"cafe repurpose ({os.cpu_count()} cores)")
    for col in ("records", "workers", "records/s", "seconds", "peak RSS main (MB)", "peak RSS all processes (MB)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["records"]), str(r["workers"]), f"{r['records_per_s']:.0f}", f"{r['seconds']:.1f}",
                      f"{r['peak_rss_main_mb']:.0f}", f"{r['peak_rss_tree_mb']:.0f}")
    console = Console()
    console.print(table)
    ratios = {}
    small, large = min(args.sizes), max(args.sizes)
    for w in args.workers:
        by = {r["records"]: r for r in rows if r["workers"] == w}
        if small in by and large in by and small != large:
            ratios[w] = {k: by[large][k] / by[small][k] for k in ("peak_rss_main_mb", "peak_rss_tree_mb")}
            ok = all(v <= 1.3 for v in ratios[w].values())
            console.print(f"{'✓' if ok else '✗'} {w} workers: peak {large} / {small} = "
                          f"{ratios[w]['peak_rss_main_mb']:.2f}x (main), {ratios[w]['peak_rss_tree_mb']:.2f}x (all); "
                          "target <= 1.3x")
    write_result(args.out, {"runs": rows, "peak_ratio_large_to_small": ratios, "cpu_count": os.cpu_count()})
    console.print(f"-> {args.out}")


if __name__ == "__main__":
    main()
