"""`cafe mine` measured: how long mining takes and how much memory it needs as the pairs grow, and how often
each false-negative rule is right, against the shapes world's ground truth.

Parts (``--parts``):

- ``scale``: mining (search in both directions + the rules + choosing k) on random L2-normalised embeddings
  (texts = images + noise, so each positive scores high), one fresh process per size so its peak memory is
  its own. Exact chunked search at each ``--exact`` size; at ``--approximate`` sizes a faiss IVF index is
  built on all pairs and searched for ``--approx-queries`` queries (searching every query of 1M pairs on
  two cores would take hours): the time of the whole run is projected from that share (labelled
  ``projected``), and recall is measured against exact search on 1,000 of them.
- ``false_negatives``: a shapes world (``--train-images``), its pairs, a miner trained here with L_con only
  for ``--steps`` steps from a fresh tiny model (or ``--model DIR``), its ``--candidates`` neighbours per
  pair in each direction, and every candidate judged against the world: a caption describes an image when
  it names the same objects (size, colour, shape, and position when the caption gives positions). Per rule:
  how many candidates it drops and what share of those were false negatives (its precision), what share of
  all false negatives among the candidates it catches (its recall), and the false-negative rate of the k
  negatives kept with no rule, each rule alone, and all of them.

    python -m benchmarks.mining [--parts scale false_negatives] [--exact 10000 100000] [--approximate 1000000]

Prints a table per part and writes docs/results/mining.json.
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
# run as a script, this folder would come first on the path and its peft.py would shadow the peft package
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks._results import default_out, write_result  # noqa: E402


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_pairs(n: int, dim: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    text = F.normalize(image + 0.8 * torch.randn(n, dim, generator=g) / dim ** 0.5 * 2, dim=1)
    return image, text


def scale_scenario(args) -> dict:
    """One size in this process (``--scenario N``)."""
    import numpy as np
    import torch

    from cafe.config import MineConfig
    from cafe.mining.rules import PairKeys, reasons, select
    from cafe.mining.run import mine_embeddings
    from cafe.mining.search import exact_topk, faiss_index, faiss_topk, recall

    torch.set_num_threads(args.threads)
    n = args.scenario
    image, text = _random_pairs(n, args.dim)
    rng = np.random.default_rng(0)
    keys = PairKeys(np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64),
                    rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64))
    embeddings_mb = _peak_mb()
    cfg = MineConfig(k=args.k, candidates=args.candidates, index="exact", chunk=args.chunk, progress=False)
    out = {"pairs": n, "dim": args.dim, "k": args.k, "candidates": args.candidates, "threads": args.threads}
    start = time.perf_counter()
    if args.method == "exact":
        mined = mine_embeddings(image, text, keys, cfg)
        out.update(index="exact", seconds=time.perf_counter() - start, recall=1.0, chunk=args.chunk,
                   kept_i2t=mined["i2t"][2]["kept"], search_s={d: v["seconds"] for d, v in mined["search"].items()})
    else:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        q = min(args.approx_queries, n)
        pick = torch.from_numpy(rng.choice(n, size=q, replace=False))
        t0 = time.perf_counter()
        index = faiss_index(text, args.nlist, args.nprobe)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, indices = faiss_topk(image[pick], text, args.candidates, index=index)
        search_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        # the rules and the choice of k on the measured queries
        positive = (image[pick] * text[pick]).sum(1).numpy()
        why = reasons(pick.numpy(), indices.numpy(), scores.numpy(), positive, keys,
                      ["caption", "image_hash", "near_duplicate", "margin"], 0.05, 4, None)
        select(indices.numpy(), scores.numpy(), why, args.k, False, rng)
        rules_s = time.perf_counter() - t0
        check = min(1000, q)
        _, truth = exact_topk(image[pick[:check]], text, args.candidates, args.chunk)
        # two directions, each: one build, then search and rules for all n queries at the measured rate
        out.update(index="faiss-ivf", nlist=args.nlist, nprobe=args.nprobe, measured_queries=q, build_s=build_s,
                   search_per_query_ms=1000 * search_s / q, rules_per_query_ms=1000 * rules_s / q,
                   recall=recall(indices[:check], truth), recall_queries=check,
                   seconds_projected=2 * (build_s + (search_s + rules_s) * n / q))
    out["peak_rss_mb"] = _peak_mb()
    out["embeddings_rss_mb"] = embeddings_mb
    return out


def part_scale(args) -> list[dict]:
    rows = []
    runs = [(n, "exact") for n in args.exact] + [(n, "faiss") for n in args.approximate]
    for n, method in runs:
        if method == "faiss":
            from cafe.mining.search import faiss_available

            if not faiss_available():
                rows.append({"pairs": n, "index": "faiss-ivf", "skipped": "faiss not installed"})
                continue
        cmd = [sys.executable, "-m", "benchmarks.mining", "--scenario", str(n), "--method", method, "--dim", str(args.dim),
               "--k", str(args.k), "--candidates", str(args.candidates), "--chunk", str(args.chunk),
               "--threads", str(args.threads), "--nlist", str(args.nlist), "--nprobe", str(args.nprobe),
               "--approx-queries", str(args.approx_queries)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {n} pairs, {row['index']}: {row.get('seconds', row.get('seconds_projected')):.1f}s, "
              f"peak {row['peak_rss_mb']:.0f} MB, recall {row['recall']:.3f}", flush=True)
    return rows


# ----------------------------------------------------------------------------- false negatives
def scene_objects(world: Path) -> dict[str, list]:
    """Scene id -> its objects, from the detailed descriptions of the training records."""
    from cafe.data.shapes import objects_from_description

    records = json.loads((world / "train" / "instructions.json").read_text())
    return {r["id"].rsplit("-", 1)[0]: objects_from_description(r["conversations"][1]["value"])
            for r in records if r["kind"] == "detailed"}


def describes(caption: str, caption_scene: list, image_scene: list) -> bool:
    """Whether ``caption`` (written for ``caption_scene``) is also true of ``image_scene``: the same objects by
    size, colour and shape, and by position when the caption gives positions."""
    positional = " at the " in caption or "in the center" in caption

    def key(scene):
        return sorted((o.size, o.colour, o.shape) + ((o.position,) if positional else ()) for o in scene)
    return key(caption_scene) == key(image_scene)


MINER_SIZES = {"vision_hidden": 64, "vision_layers": 1, "vision_heads": 2, "text_hidden": 64, "text_layers": 2,
               "text_heads": 2, "text_kv_heads": 1, "text_intermediate": 128}


def _train_miner(p, steps: int, out: Path):
    from cafe.models import build_tiny
    from cafe.data import shapes
    from cafe.stages.train import train

    p = p.model_copy(deep=True)
    # a smaller tiny model than the embedded default's (the same architecture and patch grid), so the miner
    # trains on two cores in minutes
    p.model.tiny = p.model.tiny.model_copy(update=MINER_SIZES)
    p.train.objective.alpha_lm, p.train.max_steps, p.train.lm_source = 0.0, steps, "pairs"
    p.train.output, p.train.eval_every, p.train.log_every = str(out), 0, 50
    init = lambda: build_tiny(shapes.vocabulary_corpus(), p.synth.image_size, p.model.tiny, p.prompts,  # noqa: E731
                              p.model, seed=0)
    return train(p, base_model=init, progress=True, resume=False)


def _world(args):
    """The params, work folder and timings of a shapes world of ``--train-images`` and its pairs (made unless
    ``--workdir`` holds them)."""
    from cafe.config import load_params
    from cafe.data import shapes
    from cafe.data.repurpose import repurpose

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cafe-mining-bench-"))
    p = load_params(ROOT / "params.yaml")
    p.synth.out, p.synth.train_images = str(work / "shapes"), args.train_images
    p.synth.retrieval_images, p.synth.probe_images = 20, 10
    p.repurpose.input = str(work / "shapes" / "train" / "instructions.json")
    p.repurpose.image_root = str(work / "shapes" / "train")
    p.repurpose.out, p.repurpose.workers, p.repurpose.progress = str(work / "pairs"), 1, False
    p.repurpose.val_fraction = 0.0
    p.train.data, p.train.batch_size = p.repurpose.out, args.batch_size
    timings = {}
    start = time.perf_counter()
    if not (work / "shapes" / "train" / "instructions.json").is_file():
        shapes.generate(p.synth)
    if not (work / "pairs" / "data_version.json").is_file():
        repurpose(p.repurpose)
    timings["world_s"] = time.perf_counter() - start
    return p, work, timings


def part_false_negatives(args) -> dict:
    import numpy as np
    import torch

    from cafe.mining.embed import embed_pairs, embedding_cache, read_pairs
    from cafe.mining.rules import KEEP, ORDER, PairKeys, reasons, select
    from cafe.mining.search import exact_topk
    from cafe.models import load_adapter

    torch.set_num_threads(args.threads)
    p, work, timings = _world(args)
    start = time.perf_counter()
    model = Path(args.model) if args.model else work / "miner" / "model"
    if not (model / "config.json").is_file():
        model = _train_miner(p, args.steps, work / "miner")
    timings["train_miner_s"] = time.perf_counter() - start
    adapter = load_adapter(model, p.prompts, p.model, fresh_tuning=False)
    adapter.model.eval()
    start = time.perf_counter()
    pairs = read_pairs(p.train.data, "train", p.train.captions, phash=True)
    image, text = embed_pairs(adapter, pairs, embedding_cache(adapter, "", None), 64)
    timings["embed_s"] = time.perf_counter() - start
    n = len(pairs)
    scenes = scene_objects(work / "shapes")
    scene = [scenes[pid.rsplit("-", 1)[0]] for pid in pairs.ids]
    keys = PairKeys.build(pairs.captions, pairs.image_sha256, pairs.phash)
    positive = (image * text).sum(1).numpy()
    r1 = {"i2t_R@1": float((exact_topk(image, text, 1)[1][:, 0] == torch.arange(n)).float().mean()),
          "t2i_R@1": float((exact_topk(text, image, 1)[1][:, 0] == torch.arange(n)).float().mean())}
    rules_all = ["caption", "image_hash", "near_duplicate", "margin"]
    result = {"pairs": n, "candidates": args.candidates, "k": args.k, "margin": args.margin,
              "near_duplicate_distance": args.distance,
              "miner": {"steps": args.steps, "batch_size": args.batch_size, "alpha_lm": 0.0, "sizes": MINER_SIZES,
                        "model": str(model), **r1},
              "timings": timings, "directions": {}}
    for direction, (queries, keys_emb) in (("i2t", (image, text)), ("t2i", (text, image))):
        scores, cand = (t.numpy() for t in exact_topk(queries, keys_emb, args.candidates))
        q = np.arange(n)
        if direction == "i2t":  # candidate j's caption for query i's image
            truth = np.array([[describes(pairs.captions[j], scene[j], scene[i]) for j in row]
                              for i, row in enumerate(cand)])
        else:  # query i's caption for candidate j's image
            truth = np.array([[describes(pairs.captions[i], scene[i], scene[j]) for j in row]
                              for i, row in enumerate(cand)])
        not_self = cand != q[:, None]
        info = {"false_negatives_among_candidates": int((truth & not_self).sum()),
                "candidates": int(not_self.sum()), "rules": {}, "kept_false_negative_rate": {}}
        why = reasons(q, cand, scores, positive, keys, rules_all, args.margin, args.distance, None)
        total_fn = max(1, int((truth & not_self).sum()))
        for code, name in enumerate(ORDER[1:5], start=1):
            alone = reasons(q, cand, scores, positive, keys, [name], args.margin, args.distance, None)
            dropped_alone = alone == code
            info["rules"][name] = {
                "dropped_in_order": int((why == code).sum()),
                "dropped_alone": int(dropped_alone.sum()),
                "precision_alone": float(truth[dropped_alone].mean()) if dropped_alone.any() else None,
                "recall_alone": float((truth & dropped_alone).sum() / total_fn),
            }
        arms = [("none", [], args.margin), *((f"{r} only", [r], args.margin) for r in rules_all),
                ("all", rules_all, args.margin),
                *((f"all, margin {m}", rules_all, m) for m in args.margins if m != args.margin)]
        for label, rules, margin in arms:
            w = reasons(q, cand, scores, positive, keys, rules, margin, args.distance, None)
            idx, _ = select(cand, scores, w, args.k, False, np.random.default_rng(0))
            picked = np.array([[truth[i, list(cand[i]).index(j)] if j >= 0 else False for j in row]
                               for i, row in enumerate(idx)])
            kept = int((idx >= 0).sum())
            info["kept_false_negative_rate"][label] = {"kept": kept, "false_negatives": int(picked.sum()),
                                                       "rate": float(picked.sum() / max(1, kept)),
                                                       "pairs_short": int((idx < 0).any(axis=1).sum())}
        info["dropped_in_order"] = {name: int((why == code).sum()) for code, name in enumerate(ORDER)}
        info["survivors"] = int((why == KEEP).sum())
        result["directions"][direction] = info
    return result


def part_swaps(args) -> dict:
    """The attribute-swap rule on a shapes world's pairs: the stage's summary (variants made, dropped by each
    rule, the normalised-caption rule's false-negative rate by the captions' own ground truth) and an
    independent check against the scenes (objects of the detailed descriptions): how many of the variants the
    normalised-caption rule keeps, and of the captions written, describe the pair's image."""
    from cafe.data.shards import read_data_version
    from cafe.data.shapes import ShapeObject
    from cafe.mining.embed import read_pairs
    from cafe.mining.run import mine
    from cafe.mining.shards import read_swap_captions
    from cafe.mining.swaps import judge, normalise, parse, variants

    p, work, timings = _world(args)
    cfg = p.mine.model_copy(update={"data": p.train.data, "out": str(work / "negatives-swaps"), "k": args.k,
                                    "source": "attribute_swaps", "progress": False})
    start = time.perf_counter()
    summary = mine(None, cfg, p.train.captions, read_data_version(p.train.data), None)
    timings["mine_s"] = time.perf_counter() - start
    scenes = scene_objects(work / "shapes")
    pairs = read_pairs(p.train.data, "train", p.train.captions, phash=False)
    written = read_swap_captions(cfg.out)

    def true_of(text: str, scene: list) -> bool:
        parsed = parse(text)
        if not parsed.objects:  # a count alone
            return parsed.count is not None and parsed.count[0] == len(scene)
        named = [ShapeObject(o.get("colour"), o.get("shape"), o.get("size"), o.get("position") or "center")
                 for o in parsed.objects]
        return describes(text, named, scene) and (parsed.count is None or parsed.count[0] == len(scene))

    text_rule = {"kept": 0, "false_negatives": 0}
    out = {"kept": 0, "false_negatives": 0}
    for pid, caption in zip(pairs.ids, pairs.captions):
        scene = scenes[pid.rsplit("-", 1)[0]]
        own = normalise(caption)
        for _, text in variants(caption):
            if normalise(text) != own:
                text_rule["kept"] += 1
                text_rule["false_negatives"] += true_of(text, scene)
        for _, text in written[pid]:
            out["kept"] += 1
            out["false_negatives"] += true_of(text, scene)
        assert len(judge(caption).kept) >= len(written[pid])
    for r in (text_rule, out):
        r["rate"] = r["false_negatives"] / max(1, r["kept"])
    return {"pairs": len(pairs), "k": args.k, "timings": timings, "summary": summary["swaps"],
            "scene_check": {"normalised_caption_rule": text_rule, "written": out}}


def _print_swaps(sw: dict) -> None:
    s = sw["summary"]
    print(f"\nattribute swaps ({sw['pairs']} pairs, k={sw['k']}): {s['variants']} variants, dropped {s['dropped']}")
    print(f"  false negatives by kind (normalised-caption rule alone): {s['false_negative_rate']['by_kind']}")
    for label, r in sw["scene_check"].items():
        print(f"  against the scenes, {label}: {r['false_negatives']} of {r['kept']} ({r['rate']:.4f})")
    print(f"  pairs with pair negatives {s['pairs_with_pair_negatives']}, pair negatives {s['pair_negatives']}")


def _print_scale(rows: list[dict]) -> None:
    print(f"\n{'pairs':>9} {'index':>10} {'seconds':>10} {'peak MB':>9} {'recall':>7}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['pairs']:>9} {r['index']:>10}   skipped: {r['skipped']}")
            continue
        secs = f"{r['seconds']:.1f}" if "seconds" in r else f"~{r['seconds_projected']:.0f}*"
        print(f"{r['pairs']:>9} {r['index']:>10} {secs:>10} {r['peak_rss_mb']:>9.0f} {r['recall']:>7.3f}")
    if any("seconds_projected" in r for r in rows):
        print("* projected from a measured share of the queries (see measured_queries)")


def _print_fn(fn: dict) -> None:
    print(f"\nfalse negatives ({fn['pairs']} pairs, miner i2t R@1 {fn['miner']['i2t_R@1']:.3f}, "
          f"{fn['candidates']} candidates, k={fn['k']})")
    for direction, info in fn["directions"].items():
        print(f" {direction}: {info['false_negatives_among_candidates']} false negatives among "
              f"{info['candidates']} candidates")
        print(f"   {'rule':<15} {'drops':>7} {'precision':>10} {'recall':>7}")
        for name, r in info["rules"].items():
            prec = "-" if r["precision_alone"] is None else f"{r['precision_alone']:.3f}"
            print(f"   {name:<15} {r['dropped_alone']:>7} {prec:>10} {r['recall_alone']:>7.3f}")
        print(f"   {'kept negatives':<22} {'FN rate':>8}")
        for label, r in info["kept_false_negative_rate"].items():
            print(f"   {label:<22} {r['rate']:>8.4f}  ({r['false_negatives']} of {r['kept']}; "
                  f"{r['pairs_short']} pairs short of k)")


PARTS = {"scale": (part_scale, _print_scale), "false_negatives": (part_false_negatives, _print_fn),
         "swaps": (part_swaps, _print_swaps)}
# --name, default (a list: any number of values), other argparse keywords
OPTIONS = (
    ("parts", ["scale", "false_negatives"], {"nargs": "+", "choices": list(PARTS)}),
    ("exact", [10_000, 100_000], {}), ("approximate", [1_000_000], {}), ("dim", 128, {}), ("k", 4, {}),
    ("candidates", 64, {}), ("chunk", 4096, {}), ("threads", 2, {}), ("nlist", 1024, {}), ("nprobe", 16, {}),
    ("approx-queries", 20_000, {}), ("train-images", 2000, {}), ("steps", 150, {}), ("batch-size", 32, {}),
    ("margin", 0.05, {}),
    ("margins", [-1.0, 0.0, 0.01, 0.02], {"help": "further margins for the all-rules arm (-1: a margin that drops "
                                                   "nothing)"}),
    ("distance", 4, {}), ("model", "", {"help": "a miner to use instead of training one"}),
    ("workdir", "", {"help": "keep the world, pairs and miner here (reused when present)"}),
    ("out", default_out("mining"), {}),
    ("scenario", 0, {"help": argparse.SUPPRESS}), ("method", "exact", {"help": argparse.SUPPRESS}),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default, extra in OPTIONS:
        kind = type(default[0] if isinstance(default, list) else default)
        ap.add_argument(f"--{name}", type=kind, default=default,
                        **{**({"nargs": "*"} if isinstance(default, list) else {}), **extra})
    args = ap.parse_args()
    if args.scenario:
        print(json.dumps(scale_scenario(args)))
        return
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("scenario", "method", "out")}}
    previous = Path(args.out)
    if previous.is_file():  # a run of one part keeps the other part's numbers
        old = json.loads(previous.read_text())
        result.update({k: old[k] for k in PARTS if k in old})
    for part in args.parts:
        run, show = PARTS[part]
        result[part] = run(args)
        show(result[part])
    print(f"\n-> {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
