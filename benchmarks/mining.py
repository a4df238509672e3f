"""`cafe mine` measured: how long mining takes and how much memory it needs as the pairs grow, and how often
each false-negative rule is right, against the shapes world's ground truth.

Parts (``--parts``):

- ``scale``: the whole of mining (search in both directions + the rules + choosing k, the stage's own
  ``mine_embeddings``) on synthetic L2-normalised embeddings (texts = images + noise, so each positive scores
  high; a ``--latent``-dimensional structure, as a model's embeddings have), one fresh process per size so its
  peak memory is its own: exact chunked search at each ``--exact`` size, the approximate index
  (``--index``, HNSW by default) at each ``--approximate`` size, its recall measured against exact search on
  1,000 queries and widened to ``--recall-target`` before every query is searched. At ``--curve`` sizes, on
  isotropic embeddings (no structure at all, the worst case), the index's recall and time per query at each
  search breadth (``--breadths``), on 1,000 queries.
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


def _random_pairs(n: int, dim: int, latent: int = 0, seed: int = 0):
    """``n`` L2-normalised (image, text) embeddings, texts = images + noise so each positive scores high.
    ``latent`` 0: isotropic (no structure: the worst case of an approximate index); otherwise a ``latent``-d
    Gaussian mapped linearly into ``dim`` plus a little noise, the low intrinsic dimension of a model's
    embeddings."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    if latent:
        image = torch.randn(n, latent, generator=g) @ torch.randn(latent, dim, generator=g)
        image = F.normalize(image + 0.1 * latent ** 0.5 * torch.randn(n, dim, generator=g), dim=1)
    else:
        image = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    text = F.normalize(image + 0.8 * torch.randn(n, dim, generator=g) / dim ** 0.5 * 2, dim=1)
    return image, text


def scale_scenario(args) -> dict:
    """One size in this process (``--scenario N``): ``--method exact`` or ``approximate`` runs the whole of
    mining (search both ways, the rules, the choice of k) through :func:`cafe.mining.run.mine_embeddings`;
    ``curve`` builds the index and measures recall and time per query at each search breadth on a sample."""
    import numpy as np
    import torch

    from cafe.config import MineConfig
    from cafe.mining.rules import PairKeys
    from cafe.mining.run import mine_embeddings
    from cafe.mining.search import build_index, exact_topk, recall_at

    torch.set_num_threads(args.threads)
    if args.method != "exact":
        import faiss

        faiss.omp_set_num_threads(args.threads)
    n = args.scenario
    latent = 0 if args.method == "curve" else args.latent
    image, text = _random_pairs(n, args.dim, latent)
    rng = np.random.default_rng(0)
    keys = PairKeys(np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64),
                    rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64))
    embeddings_mb = _peak_mb()
    cfg = MineConfig(k=args.k, candidates=args.candidates, index="exact" if args.method == "exact" else args.index,
                     chunk=args.chunk, recall_target=args.recall_target, progress=False)
    out = {"pairs": n, "dim": args.dim, "embeddings": f"latent-{latent}" if latent else "isotropic", "k": args.k,
           "candidates": args.candidates, "threads": args.threads, "run": args.method}
    start = time.perf_counter()
    if args.method == "curve":
        index = build_index(text, args.index, cfg)
        out.update(index=args.index, build_s=time.perf_counter() - start)
        pick = torch.from_numpy(rng.choice(n, size=1000, replace=False))
        _, truth = exact_topk(image[pick], text, args.candidates, args.chunk)
        out["curve"] = [recall_at(index, image[pick], truth, width) for width in args.breadths]
    else:
        mined = mine_embeddings(image, text, keys, cfg)
        search = mined["search"]
        out.update(index=search["i2t"]["index"], seconds=time.perf_counter() - start,
                   recall=min(d["recall"] for d in search.values()), kept_i2t=mined["i2t"][2]["kept"],
                   search=search)
    out["peak_rss_mb"] = _peak_mb()
    out["embeddings_rss_mb"] = embeddings_mb
    return out


def part_scale(args) -> list[dict]:
    rows = []
    runs = ([(n, "exact") for n in args.exact] + [(n, "approximate") for n in args.approximate]
            + [(n, "curve") for n in args.curve])
    for n, method in runs:
        if method != "exact":
            from cafe.mining.search import faiss_available

            if not faiss_available():
                rows.append({"pairs": n, "index": args.index, "run": method, "skipped": "faiss not installed"})
                continue
        cmd = [sys.executable, "-m", "benchmarks.mining", "--scenario", str(n), "--method", method]
        for name in ("dim", "k", "candidates", "chunk", "threads", "latent", "index", "recall-target"):
            cmd += [f"--{name}", str(getattr(args, name.replace("-", "_")))]
        cmd += ["--breadths", *map(str, args.breadths)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        if method == "curve":
            print(f"  {n} pairs, {row['index']} recall curve ({row['embeddings']}): "
                  + ", ".join(f"{c['breadth']}: {c['recall']:.3f}" for c in row["curve"]), flush=True)
        else:
            print(f"  {n} pairs, {row['index']} ({row['embeddings']}): {row['seconds']:.1f}s, "
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
    print(f"\n{'pairs':>9} {'embeddings':>11} {'index':>6} {'seconds':>9} {'peak MB':>8} {'recall':>7}  search")
    for r in rows:
        if "skipped" in r:
            print(f"{r['pairs']:>9} {r['index']:>18}   skipped: {r['skipped']}")
        elif r["run"] == "curve":
            curve = ", ".join(f"{c['breadth']}: {c['recall']:.3f} ({c['ms_per_query']:.2f} ms/q)" for c in r["curve"])
            print(f"{r['pairs']:>9} {r['embeddings']:>11} {r['index']:>6}  build {r['build_s']:.0f}s; recall by "
                  f"breadth on 1,000 queries: {curve}")
        else:
            how = "; ".join(f"{d} {v['seconds']:.0f}s" + (f" (build {v['build_s']:.0f}s, breadth {v['breadth']})"
                                                          if "breadth" in v else "") for d, v in r["search"].items())
            print(f"{r['pairs']:>9} {r['embeddings']:>11} {r['index']:>6} {r['seconds']:>9.1f} "
                  f"{r['peak_rss_mb']:>8.0f} {r['recall']:>7.3f}  {how}")


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
    ("exact", [10_000, 100_000], {}), ("approximate", [1_000_000], {}),
    ("curve", [1_000_000], {"help": "sizes at which to measure recall by search breadth on isotropic embeddings"}),
    ("latent", 16, {"help": "intrinsic dimension of the scale part's embeddings (0: isotropic)"}),
    ("index", "hnsw", {"choices": ["hnsw", "ivf"]}), ("recall-target", 0.95, {}),
    ("breadths", [128, 256, 512, 1024, 2048, 4096], {}), ("dim", 128, {}), ("k", 4, {}),
    ("candidates", 64, {}), ("chunk", 4096, {}), ("threads", 2, {}),
    ("train-images", 2000, {}), ("steps", 150, {}), ("batch-size", 32, {}),
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
