"""Retrieval evaluation at COCO-5K scale: 5K images x 25K captions, realistic embedding width (896, the
width of LLaVA-OneVision-0.5B's LM), random L2-normalised embeddings.

Each scenario runs in a fresh process so its peak memory (ru_maxrss) is its own:
- similarity at several chunk sizes (query rows per block), and the whole matrix at once for contrast;
- uncached vs cached embedding: uncached = embedding step + writing the cache + similarity; cached =
  reading the cache + similarity. The embedding step's cost is projected from the tiny embedded model's
  measured throughput (texts/s and images/s on this machine), since a real 0.5B model cannot run here;
  the projection is reported separately and labelled as such.

    python benchmarks/retrieval_eval.py [--images 5000 --captions-per-image 5 --dim 896]

Prints a table and writes docs/results/retrieval_eval.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import default_out, write_result  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scenario(args) -> dict:
    """One measurement in this process (called through --scenario)."""
    import torch

    from cafe.evaluation.cache import EmbeddingCache
    from cafe.evaluation.retrieval import recall_from_ranks, retrieval_ranks

    torch.set_num_threads(args.threads)
    n_img, n_txt = args.images, args.images * args.captions_per_image
    owner = torch.arange(n_txt) // args.captions_per_image
    cache = EmbeddingCache(args.cache_dir, "bench-model")
    out = {"scenario": args.scenario, "chunk": args.chunk}
    base_rss = _rss_mb()
    start = time.perf_counter()
    if args.scenario == "cached":
        img = cache.get_or_compute("images", "bench", lambda: (_ for _ in ()).throw(RuntimeError("cache miss")))
        txt = cache.get_or_compute("texts", "bench", lambda: (_ for _ in ()).throw(RuntimeError("cache miss")))
    else:
        g = torch.Generator().manual_seed(0)
        img = cache.get_or_compute("images", "bench", lambda: torch.nn.functional.normalize(
            torch.randn(n_img, args.dim, generator=g), dim=-1))
        txt = cache.get_or_compute("texts", "bench", lambda: torch.nn.functional.normalize(
            torch.randn(n_txt, args.dim, generator=g), dim=-1))
    out["embeddings_s"] = time.perf_counter() - start
    rss_before = _rss_mb()
    start = time.perf_counter()
    i2t, t2i = retrieval_ranks(img, txt, owner, chunk=args.chunk)
    metrics = recall_from_ranks(i2t, t2i, [1, 5, 10])
    out["similarity_s"] = time.perf_counter() - start
    out["rss_embeddings_mb"] = rss_before - base_rss
    out["peak_rss_mb"] = _peak_mb()
    out["peak_over_embeddings_mb"] = _peak_mb() - rss_before
    out["i2t_R@1"] = metrics["i2t_R@1"]
    return out


def tiny_model_throughput(threads: int, batch_one: bool = False) -> dict:
    """Texts/s and images/s of the embedded tiny model (params.yaml sizes) through the evaluation's batched
    embedding (``encode_texts`` / ``encode_images`` at their default batch sizes); with ``batch_one`` also the same
    code at batch size 1 (the official code's evaluation style) on the same model and inputs, and the speed-ups."""
    import torch

    from cafe.config import load_params
    from cafe.data import shapes
    from cafe.models.llava_onevision import build_tiny

    torch.set_num_threads(threads)
    p = load_params(ROOT / "params.yaml")
    adapter = build_tiny(shapes.vocabulary_corpus(), p.synth.image_size, p.model.tiny, p.prompts, p.model)
    adapter.model.eval()
    import random

    rng = random.Random(0)
    scenes = [shapes.sample_scene(rng, str(i), p.synth.object_count_weights) for i in range(64)]
    images = [shapes.render(s, p.synth.image_size, rng) for s in scenes]
    texts = [shapes.phrasings(s)[0] for s in scenes] * 2
    adapter.encode_texts(texts[:8]), adapter.encode_images(images[:8])  # warm-up

    def rate(fn, items, batch_size=None) -> float:
        clock = time.process_time  # this process's work: other jobs on shared cores do not inflate it
        start = clock()
        fn(items) if batch_size is None else fn(items, batch_size)
        return len(items) / (clock() - start)
    out = {"texts_per_s": rate(adapter.encode_texts, texts), "images_per_s": rate(adapter.encode_images, images),
           "clock": "process_cpu", "texts": len(texts), "images": len(images)}
    if batch_one:
        out["texts_per_s_batch1"] = rate(adapter.encode_texts, texts, 1)
        out["images_per_s_batch1"] = rate(adapter.encode_images, images, 1)
        out["texts_speedup"] = out["texts_per_s"] / out["texts_per_s_batch1"]
        out["images_speedup"] = out["images_per_s"] / out["images_per_s_batch1"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--dim", type=int, default=896)
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=default_out("retrieval_eval"))
    ap.add_argument("--throughput-only", action="store_true",
                    help="only the embedding throughput, batched vs batch size 1 (same model, inputs and run)")
    ap.add_argument("--scenario", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scenario:
        print(json.dumps(scenario(args)))
        return
    if args.throughput_only:
        rate = tiny_model_throughput(args.threads, batch_one=True)
        print(f"embedding throughput of the evaluation, tiny embedded model, {args.threads} thread(s), CPU time:")
        for kind in ("images", "texts"):
            print(f"  {kind}: {rate[kind + '_per_s']:.1f}/s batched vs {rate[kind + '_per_s_batch1']:.1f}/s at batch size 1"
                  f" ({rate[kind + '_speedup']:.1f}x)")
        write_result(args.out, {"threads": args.threads, **rate})
        print(f"-> {args.out}")
        return

    def run(name: str, chunk: int, cache_dir: str) -> dict:
        cmd = [sys.executable, __file__, "--scenario", name, "--chunk", str(chunk), "--cache-dir", cache_dir,
               "--images", str(args.images), "--captions-per-image", str(args.captions_per_image),
               "--dim", str(args.dim), "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])

    n_txt = args.images * args.captions_per_image
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run("uncached", 1024, tmp))
        rows.append(run("cached", 1024, tmp))
        for chunk in args.chunks:
            if chunk != 1024:
                rows.append(run("cached", chunk, tmp))
        rows.append(run("cached", max(args.images, n_txt), tmp))  # the whole matrix at once
        rows[-1]["scenario"] = "cached, whole matrix"
    rate = tiny_model_throughput(args.threads)
    projected = n_txt / rate["texts_per_s"] + args.images / rate["images_per_s"]
    rows[0]["projected_embedding_s"] = projected
    rows[0]["total_s"] = projected + rows[0]["embeddings_s"] + rows[0]["similarity_s"]
    for row in rows[1:]:
        row["total_s"] = row["embeddings_s"] + row["similarity_s"]

    print(f"\nretrieval evaluation, {args.images} images x {n_txt} captions, dim {args.dim}, {args.threads} threads")
    print(f"tiny model embedding throughput here: {rate['texts_per_s']:.0f} texts/s, {rate['images_per_s']:.0f} images/s "
          f"-> projected uncached embedding step {projected:.1f}s")
    head = f"{'scenario':<22}{'chunk':>7}{'embed/cache s':>15}{'similarity s':>14}{'total s':>10}{'peak RSS MB':>13}{'peak - emb MB':>15}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['scenario']:<22}{r['chunk']:>7}{r['embeddings_s']:>15.2f}{r['similarity_s']:>14.2f}{r['total_s']:>10.1f}"
              f"{r['peak_rss_mb']:>13.0f}{r['peak_over_embeddings_mb']:>15.0f}")
    print("uncached total = projected embedding step + random embeddings written to the cache + similarity")
    write_result(args.out, {"images": args.images, "captions": n_txt, "dim": args.dim,
                            "threads": args.threads, "tiny_model_throughput": rate, "rows": rows})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
