"""Hard negatives against in-batch InfoNCE at one budget (issue 20 part 4, docs/mining.md).

The embedded base retrieves at chance, so a miner must be trained first: every arm runs two rounds from one
base, and round 1 is shared. Round 1 is in-batch CAFe for ``--round1-epochs`` (the main job's stage, shorter);
round 2 continues from it for ``--round2-epochs`` with its arm's negatives, so the whole budget (round 1
counted) is the same in every arm:

- ``in_batch``: round 2 without negatives (the control: the same restart of the schedule, no negatives);
- ``mined``: ``cafe mine`` with the round-1 model, the false-negative rules of ``params.yaml``;
- ``unfiltered``: the same mining with every rule off (``mine.rules=[]``: only the pair itself is dropped);
- ``swaps``: rule-made attribute swaps of each caption (``mine.source=attribute_swaps``): not mined, a
  separate, labelled arm.

Each model is measured on ``--eval`` with the suite (R@1, SugarCrepe-format swap / replace subsets, the
MMEB-format compositional task, the understanding metrics of the main job's table) and the skill probes of
``benchmarks.understanding``. For each arm's negatives the share that are false negatives is measured
against the shapes world's ground truth (a caption is true of an image when it names the same objects), and
the stage's summary (what each rule dropped) is kept.

Usage: python -m benchmarks.negatives --base models/base/model [--eval data/shapes/dev] [--seeds 0,1]
[--round1-epochs 4] [--round2-epochs 4] [--arms in_batch,mined,unfiltered,swaps] [-s section.key=value ...]
[--out docs/results/negatives.json]
An interrupted run goes on where it stopped (runs already in ``--out`` are not trained again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from benchmarks._results import default_out, write_result
from benchmarks.mining import describes, scene_objects
from benchmarks.tradeoff import losses, summarise
from benchmarks.understanding import fine_tune, measure, start_sweep
from cafe.config import load_params

# arm -> (label, mine overrides; None: no negatives)
ARMS = {
    "in_batch": ("in-batch only", None),
    "mined": ("mined, rules on", []),
    "unfiltered": ("mined, rules off", ["mine.rules=[]"]),
    "swaps": ("attribute swaps (rule-made)", ["mine.source=attribute_swaps"]),
}
COLUMNS = ["i2t_R@1", "t2i_R@1", "sugarcrepe_accuracy", "sugarcrepe_swap_accuracy", "sugarcrepe_replace_accuracy",
           "mmeb_ShapesComposition_hit@1", "mmstar_accuracy", "pope_avg_accuracy", "object_f1", "throne_f1",
           "pope_invalid", "mmstar_invalid", "modality_gap", "train_seconds"]


def false_negative_rates(pairs_dir: str, captions: str, negatives_dir: str, world: Path) -> dict:
    """Per direction, how many of the written pair negatives are false negatives by the shapes world's ground
    truth: i2t, a negative pair's caption that is true of the query's image; t2i, a negative pair's image of
    which the query's caption is true."""
    from cafe.mining.embed import read_pairs
    from cafe.mining.shards import read_negatives

    pairs = read_pairs(pairs_dir, "train", captions, phash=False, progress=False)
    caption = dict(zip(pairs.ids, pairs.captions))
    scenes = scene_objects(world)
    scene = {pid: scenes[pid.rsplit("-", 1)[0]] for pid in pairs.ids}
    counts = {"i2t": [0, 0], "t2i": [0, 0]}
    for pid, (texts, images) in read_negatives(negatives_dir).items():
        for j in texts:
            counts["i2t"][0] += 1
            counts["i2t"][1] += describes(caption[j], scene[j], scene[pid])
        for j in images:
            counts["t2i"][0] += 1
            counts["t2i"][1] += describes(caption[pid], scene[pid], scene[j])
    return {d: {"negatives": n, "false_negatives": fn, "rate": fn / n if n else None}
            for d, (n, fn) in counts.items()}


class Comparison:
    """Trains, mines and measures each piece once: every result is kept in ``results`` (and on disk)."""

    def __init__(self, args, results: dict):
        self.args, self.results = args, results
        self.runs = Path(args.runs)

    def params(self, overrides: list[str]):
        p = load_params(self.args.params, self.args.set + overrides)
        if "mmeb" not in p.evaluate.parts:  # its compositional task
            p.evaluate.parts = [*p.evaluate.parts, "mmeb"]
        return p

    def round1(self, seed: int) -> Path:
        model = self.runs / f"round1-s{seed}" / "model"
        if not (model / "config.json").is_file():
            fine_tune(self.params([f"train.seed={seed}", f"train.base_model={self.args.base}",
                                   f"train.epochs={self.args.round1_epochs}", f"train.output={model.parent}"]))
        return model

    def negatives(self, arm: str, seed: int, miner: Path) -> str:
        """The arm's negatives folder, mined (or made) once: the swaps need no model, so one serves every seed."""
        from cafe.stages.mine import mine

        name = "negatives-swaps" if arm == "swaps" else f"negatives-{arm}-s{seed}"
        folder = self.runs / name
        key = f"mine:{name}"
        if key not in self.results["mining"] or not (folder / "data_version.json").is_file():
            p = self.params(ARMS[arm][1])
            summary = mine(p, model=str(miner), data=p.train.data, out=str(folder))
            self.results["mining"][key] = {
                "arm": arm, "seed": None if arm == "swaps" else seed, "summary": summary,
                "false_negatives": false_negative_rates(p.train.data, p.train.captions, str(folder),
                                                        Path(p.synth.out))}
            write_result(self.args.out, self.results)
        return str(folder)

    def run(self, arm: str, seed: int) -> dict:
        key = f"{arm}-s{seed}@{self.args.eval}"
        if key in self.results["runs"]:
            return self.results["runs"][key]
        miner = self.round1(seed)
        output = self.runs / f"{arm}-s{seed}"
        overrides = [f"train.seed={seed}", f"train.base_model={miner}", f"train.epochs={self.args.round2_epochs}",
                     f"train.output={output}"]
        if ARMS[arm][1] is not None:
            overrides.append(f"train.negatives={self.negatives(arm, seed, miner)}")
        p = self.params(overrides)
        model, seconds = fine_tune(p)
        metrics = measure(model, p, self.args.eval, self.runs / f"{arm}-s{seed}-metrics")
        row = {"arm": arm, "seed": seed, "eval": self.args.eval, "train_seconds": seconds,
               "negatives_per_sample": p.train.negatives_per_sample if ARMS[arm][1] is not None else 0,
               **losses(output), **metrics}
        self.results["runs"][key] = row
        write_result(self.args.out, self.results)
        print(arm, seed, {k: round(row[k], 3) for k in COLUMNS if k in row}, flush=True)
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default="models/base/model", help="the base round 1 starts from")
    ap.add_argument("--eval", default="data/shapes/dev", help="the world the models are measured on")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--round1-epochs", type=int, default=4, help="in-batch CAFe: the miner")
    ap.add_argument("--round2-epochs", type=int, default=4, help="from the miner, with each arm's negatives")
    ap.add_argument("--arms", default=",".join(ARMS), help="of " + ", ".join(ARMS))
    ap.add_argument("--runs", default="runs/negatives", help="where the models and negatives go")
    ap.add_argument("-s", "--set", action="append", default=[], help="params override for every run")
    ap.add_argument("--out", default=default_out("negatives"))
    args, arms, results = start_sweep(ap, ARMS)
    out = Path(args.out)
    results.setdefault("mining", {})
    results["settings"] = {k: getattr(args, k) for k in ("base", "eval", "seeds", "round1_epochs", "round2_epochs",
                                                          "set")}
    comparison = Comparison(args, results)
    seeds = [int(s) for s in args.seeds.split(",")]
    table = {}
    for seed in seeds:  # seed by seed, so a short session still ends with every arm of one seed
        for arm in arms:
            comparison.run(arm, seed)
    for arm in arms:
        rows = [results["runs"][f"{arm}-s{seed}@{args.eval}"] for seed in seeds]
        mean, std = summarise(rows, COLUMNS)
        fn = [m["false_negatives"] for m in results["mining"].values() if m["arm"] == arm]
        pooled = {d: (sum(f[d]["false_negatives"] for f in fn), sum(f[d]["negatives"] for f in fn))
                  for d in ("i2t", "t2i")}
        table[arm] = {"label": ARMS[arm][0], "seeds": seeds, "mean": mean, "std": std,
                      "false_negative_rate": {d: false / n if n else None for d, (false, n) in pooled.items()}}
    results["table"] = table
    write_result(out, results)
    print_table(table, len(seeds), args)


def print_table(table: dict, n_seeds: int, args) -> None:
    """The arms' means (sd over seeds where there are several), 80 columns wide."""
    view = Table(title=f"mean of {n_seeds} seed(s) on {args.eval}, {args.round1_epochs} + {args.round2_epochs} "
                       "epochs", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("arm", "i2t R@1", "t2i R@1", "SC swap", "SC repl", "MMEB", "MMStar", "obj F1", "FN i2t/t2i"):
        view.add_column(col, justify="left" if col == "arm" else "right")
    for arm, row in table.items():
        m, s = row["mean"], row["std"]

        def cell(k, sd=False):
            return "-" if k not in m else f"{m[k]:.2f}" + (f"±{s[k]:.2f}" if sd and n_seeds > 1 else "")
        fn = row["false_negative_rate"]
        view.add_row(arm, cell("i2t_R@1", True), cell("t2i_R@1", True), cell("sugarcrepe_swap_accuracy"),
                     cell("sugarcrepe_replace_accuracy"), cell("mmeb_ShapesComposition_hit@1"),
                     cell("mmstar_accuracy"), cell("object_f1"),
                     "/".join("-" if fn[d] is None else f"{fn[d]:.3f}" for d in ("i2t", "t2i")))
    Console().print(view)


if __name__ == "__main__":
    main()
