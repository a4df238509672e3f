"""Paper Table 7 in miniature, as an experiment: the alpha_lm : alpha_con trade-off at one budget.

From one base, each arm (contrastive only, CAFe at alpha_lm : alpha_con = 0.05, 0.1, 0.2, 1, and language
only) is fine-tuned for the same number of steps with the L_lm source of ``params.yaml`` (``train.lm_source``).
Every arm gets the same search first: a grid of learning rates (the vision tower's at the same 1 : 5 ratio
as ``params.yaml``) and, where there is a contrastive term, temperatures, one seed each, measured on the
**search world** (the dev world); the arm keeps the point with the best mean R@1 of both directions
(language only: the best mean of MMStar-format accuracy, POPE accuracy and caption object F1). Then each arm
runs its chosen point with every seed and is measured on ``--eval`` (the evaluation world for the final
table), with the suite and the skill probes of ``benchmarks.understanding``. Each run also records its
training losses (the first and last 10 steps' L_con and L_lm), which say how fast each arm learns.

Usage: python -m benchmarks.tradeoff --base models/base/model [--search-eval data/shapes/dev]
[--eval data/shapes/eval] [--steps 244] [--seeds 0,1,2] [--lrs 1e-3,2e-3,4e-3] [--temperatures 0.01,0.05]
[--arms 0,0.05,0.1,0.2,1,lm] [-s section.key=value ...] [--out docs/results/tradeoff.json]
An interrupted run goes on where it stopped (runs already in ``--out`` are not trained again).
(As a module: run as a script, benchmarks/peft.py would shadow the peft package.)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from benchmarks._results import default_out, write_result
from benchmarks.understanding import fine_tune, measure, start_sweep
from cafe.config import load_params

# key -> (label, alpha_lm, alpha_con); the paper's ratio is alpha_lm / alpha_con, its contrastive term
# being about a tenth of the language term, as here with alpha_con 10
ARMS = {
    "0": ("contrastive only", 0.0, 10.0),
    "0.05": ("CAFe 0.05", 0.5, 10.0),
    "0.1": ("CAFe 0.1 (default)", 1.0, 10.0),
    "0.2": ("CAFe 0.2", 2.0, 10.0),
    "1": ("CAFe 1", 10.0, 10.0),
    "lm": ("language only", 1.0, 0.0),
}
# Table 7 of the paper (LLaVA-OV 0.5B... fine-tuned with CAFe): Flickr I2T / T2I R@1 and MMStar, in %
PAPER = {"0": (89.0, 75.0, 53.9), "0.05": (88.3, 75.8, 56.5), "0.1": (87.5, 75.3, 56.8),
         "0.2": (87.0, 74.7, 57.3), "1": (84.9, 73.2, 57.1)}
COLUMNS = ["i2t_R@1", "t2i_R@1", "mmstar_accuracy", "pope_avg_accuracy", "pope_invalid", "mmstar_invalid",
           "object_f1", "yesno_auc", "modality_gap"]


def criterion(arm: str, metrics: dict) -> float:
    """What the search maximises: retrieval where the arm trains it, the understanding metrics where not."""
    if ARMS[arm][2] > 0:
        return (metrics["i2t_R@1"] + metrics["t2i_R@1"]) / 2
    return (metrics["mmstar_accuracy"] + metrics["pope_avg_accuracy"] + metrics["object_f1"]) / 3


def grid(arm: str, lrs: list[float], temperatures: list[float]) -> list[tuple[float, float | None]]:
    """The search points of an arm: (lr, temperature); the temperature only where L_con is trained."""
    if ARMS[arm][2] == 0:
        return [(lr, None) for lr in lrs]
    return [(lr, t) for lr in lrs for t in temperatures]


def losses(run_dir: Path, window: int = 10) -> dict:
    """The first and last ``window`` logged steps' mean L_con and L_lm of a run (its ``train_log.jsonl``)."""
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    out = {}
    for term in ("loss_con", "loss_lm"):
        values = [r[term] for r in rows if r.get(term) is not None]
        if values:
            out[f"{term}_first"] = statistics.fmean(values[:window])
            out[f"{term}_last"] = statistics.fmean(values[-window:])
    return out


def summarise(seeds: list[dict], columns: list[str] | None = None) -> tuple[dict, dict]:
    """Mean and sample standard deviation over seeds of every column (default: this table's and the last
    losses) the seeds all have."""
    columns = COLUMNS + ["loss_con_last", "loss_lm_last"] if columns is None else columns
    keys = [k for k in columns if seeds and all(k in s for s in seeds)]
    mean = {k: statistics.fmean(s[k] for s in seeds) for k in keys}
    std = {k: statistics.stdev(s[k] for s in seeds) if len(seeds) > 1 else 0.0 for k in keys}
    return mean, std


class Sweep:
    """Trains and measures runs once: every result is kept in ``results`` (and on disk after each run)."""

    def __init__(self, args, results: dict):
        self.args, self.results = args, results
        self.runs = Path(args.runs)

    def run(self, arm: str, lr: float, temperature: float | None, seed: int, eval_dir: str) -> dict:
        _, a_lm, a_con = ARMS[arm]
        name = f"{arm}-lr{lr:g}" + ("" if temperature is None else f"-t{temperature:g}") + f"-s{seed}"
        key = f"{name}@{eval_dir}"
        if key in self.results["runs"]:
            return self.results["runs"][key]
        optim = load_params(self.args.params, self.args.set).train.optim
        output = self.runs / name
        overrides = [f"train.objective.alpha_lm={a_lm}", f"train.objective.alpha_con={a_con}",
                     f"train.optim.lr={lr}", f"train.optim.lr_vision={lr * optim.lr_vision / optim.lr}",
                     f"train.seed={seed}", f"train.base_model={self.args.base}", f"train.output={output}",
                     f"train.max_steps={self.args.steps}"]
        if temperature is not None:
            overrides.append(f"train.objective.temperature={temperature}")
        p = load_params(self.args.params, self.args.set + overrides)
        model = output / "model"
        trained = next((r for r in self.results["runs"].values() if r["name"] == name), None)
        if trained is None or not (model / "config.json").is_file():
            model, seconds = fine_tune(p)
        else:  # the same training measured on another world: no need to train it again
            seconds = trained["train_seconds"]
        metrics = measure(model, p, eval_dir, self.runs / f"{name}-metrics-{Path(eval_dir).name}")
        row = {"name": name, "arm": arm, "lr": lr, "temperature": temperature, "seed": seed, "eval": eval_dir,
               "train_seconds": seconds, **losses(output), **{k: metrics[k] for k in metrics}}
        self.results["runs"][key] = row
        write_result(self.args.out, self.results)
        print(name, eval_dir, {k: round(row[k], 3) for k in COLUMNS + ["loss_con_last"] if k in row},
              f"{seconds:.0f}s", flush=True)
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default="models/base/model", help="the base every arm starts from")
    ap.add_argument("--search-eval", default="data/shapes/dev", help="the world the search measures on")
    ap.add_argument("--eval", default="data/shapes/dev", help="the world of the final table (data/shapes/eval)")
    ap.add_argument("--steps", type=int, default=0, help="training steps per run (0: params.yaml's epochs)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lrs", default="1e-3,2e-3,4e-3", help="the search's language-model learning rates")
    ap.add_argument("--temperatures", default="0.01,0.05", help="the search's contrastive temperatures")
    ap.add_argument("--arms", default=",".join(ARMS), help="of " + ", ".join(ARMS))
    ap.add_argument("--runs", default="runs/tradeoff", help="where the fine-tuned models go")
    ap.add_argument("-s", "--set", action="append", default=[], help="params override for every run")
    ap.add_argument("--out", default=default_out("tradeoff"))
    args, arms, results = start_sweep(ap, ARMS)
    out = Path(args.out)
    results["settings"] = {k: getattr(args, k) for k in ("base", "search_eval", "eval", "steps", "seeds", "lrs",
                                                          "temperatures", "set")}
    sweep = Sweep(args, results)
    lrs = [float(v) for v in args.lrs.split(",")]
    temperatures = [float(v) for v in args.temperatures.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    table = {}
    for arm in arms:
        searched = [sweep.run(arm, lr, t, seeds[0], args.search_eval) for lr, t in grid(arm, lrs, temperatures)]
        best = max(searched, key=lambda r: criterion(arm, r))
        final = [sweep.run(arm, best["lr"], best["temperature"], seed, args.eval) for seed in seeds]
        mean, std = summarise(final)
        table[arm] = {"label": ARMS[arm][0], "alpha_lm": ARMS[arm][1], "alpha_con": ARMS[arm][2],
                      "chosen": {"lr": best["lr"], "temperature": best["temperature"],
                                 "criterion": criterion(arm, best)},
                      "search": [{"lr": r["lr"], "temperature": r["temperature"], "criterion": criterion(arm, r)}
                                 for r in searched],
                      "seeds": seeds, "mean": mean, "std": std, "paper": PAPER.get(arm)}
    results["table"] = table
    write_result(out, results)

    print_table(table, len(seeds), args)


def print_table(table: dict, n_seeds: int, args) -> None:
    """Two tables that fit 80 columns: this run's means (sd over seeds where there are several), and the
    chosen point, the end of training and the paper's numbers beside each arm."""
    console = Console()
    view = Table(title=f"mean of {n_seeds} seed(s) on {args.eval}, {args.steps or 'default'} steps",
                 box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("run", "ratio", "i2t R@1", "t2i R@1", "MMStar", "POPE", "invalid", "obj F1"):
        view.add_column(col, justify="left" if col == "run" else "right")
    for arm, row in table.items():
        m, s = row["mean"], row["std"]

        def cell(k, sd=False):
            return "-" if k not in m else f"{m[k]:.2f}" + (f"±{s[k]:.2f}" if sd and n_seeds > 1 else "")
        view.add_row(arm, "-" if row["alpha_con"] == 0 else f"{row['alpha_lm'] / row['alpha_con']:g}",
                     cell("i2t_R@1", True), cell("t2i_R@1", True), cell("mmstar_accuracy"),
                     cell("pope_avg_accuracy"), f"{m.get('pope_invalid', 0):.2f}/{m.get('mmstar_invalid', 0):.2f}",
                     cell("object_f1"))
    console.print(view)
    setup = Table(title="chosen point, end of training, the paper (Flickr R@1 %, MMStar %)", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for col in ("run", "label", "lr", "tau", "L_con end", "L_lm end", "paper I2T/T2I/MMStar"):
        setup.add_column(col, justify="left" if col in ("run", "label") else "right")
    for arm, row in table.items():
        m, t = row["mean"], row["chosen"]["temperature"]
        setup.add_row(arm, row["label"], f"{row['chosen']['lr']:g}", "-" if t is None else f"{t:g}",
                      f"{m['loss_con_last']:.3f}" if "loss_con_last" in m else "-",
                      f"{m['loss_lm_last']:.3f}" if "loss_lm_last" in m else "-",
                      "/".join(f"{v:g}" for v in row["paper"]) if row["paper"] else "-")
    console.print(setup)


if __name__ == "__main__":
    main()
