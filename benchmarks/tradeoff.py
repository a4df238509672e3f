"""Paper Table 7 in miniature: fine-tune the same base for the same budget with contrastive-only,
language-only, and CAFe at several alpha_lm : alpha_con ratios; print retrieval R@1 and caption object F1.

Usage: python -m benchmarks.tradeoff [--steps N] [--caption-images N] [--pope-questions N] [--out ...]
(as a module: run as a script, benchmarks/peft.py would shadow the peft package)
Needs the base model (`cafe pretrain`, or `make demo` once).
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from benchmarks._results import default_out, write_result
from cafe.config import load_params
from cafe.data.pairs import pairs_dataset
from cafe.distributed import DistEnv
from cafe.evaluation.evaluate import evaluate
from cafe.models import load_adapter
from cafe.training.trainer import Trainer

# (label, alpha_lm, alpha_con); the ratio column is alpha_lm / alpha_con as in the paper
RUNS = [
    ("contrastive only", 0.0, 10.0),
    ("CAFe 0.05", 0.5, 10.0),
    ("CAFe 0.1 (default)", 1.0, 10.0),
    ("CAFe 0.2", 2.0, 10.0),
    ("CAFe 1", 10.0, 10.0),
    ("language only", 1.0, 0.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=0, help="training steps per run (0: params.yaml's epochs)")
    ap.add_argument("--out", default=default_out("tradeoff"))
    ap.add_argument("--parts", default="retrieval,geometry,captions,pope",
                    help="evaluation parts per run (the table needs these; the rest of the suite only costs time)")
    ap.add_argument("--caption-images", type=int, default=0,
                    help="caption at most this many held-out images (0: all 500); retrieval always uses all")
    ap.add_argument("--pope-questions", type=int, default=0, help="at most this many POPE questions per split (0: all)")
    args = ap.parse_args()
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    base = load_params(args.params)
    samples = pairs_dataset(base)
    results = []
    for label, a_lm, a_con in RUNS:
        p = load_params(args.params, [f"train.objective.alpha_lm={a_lm}", f"train.objective.alpha_con={a_con}",
                                      f"train.output=runs/bench/{label.split()[0]}-{a_lm}-{a_con}",
                                      f"train.max_steps={args.steps}"])
        p.evaluate.parts = args.parts.split(",")
        p.evaluate.max_items.update({k: v for k, v in (("captions", args.caption_images), ("pope", args.pope_questions)) if v})
        start = time.perf_counter()
        model_dir = Trainer(p.train, p, DistEnv(), progress=False).fit(samples, p.train.base_model, resume=False)
        seconds = time.perf_counter() - start
        metrics = evaluate(load_adapter(model_dir, p.prompts, p.model), p.evaluate, p.prompts)
        results.append({"run": label, "alpha_lm": a_lm, "alpha_con": a_con, "train_seconds": seconds, **metrics})
        print(f"{label}: i2t R@1 {metrics['i2t_R@1']:.3f} t2i R@1 {metrics['t2i_R@1']:.3f} "
              f"object F1 {metrics['object_f1']:.3f} ({seconds:.0f}s)", flush=True)

    table = Table(title="alpha_lm : alpha_con trade-off (same base, same budget)")
    for col in ("run", "ratio", "i2t R@1", "t2i R@1", "object F1", "probe acc", "modality gap"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in results:
        ratio = "-" if r["alpha_con"] == 0 else f"{r['alpha_lm'] / r['alpha_con']:g}"
        cells = [r.get(k) for k in ("i2t_R@1", "t2i_R@1", "object_f1", "probe_accuracy", "modality_gap")]
        table.add_row(r["run"], ratio, *("-" if v is None else f"{v:.3f}" for v in cells))
    Console().print(table)

    by = {r["run"]: r for r in results}
    con, lm, cafe = by["contrastive only"], by["language only"], by["CAFe 0.1 (default)"]
    summary = {
        "cafe_r1_share_of_contrastive_only": (cafe["i2t_R@1"] + cafe["t2i_R@1"]) / max(1e-9, con["i2t_R@1"] + con["t2i_R@1"]),
        "cafe_f1_share_of_language_only": cafe["object_f1"] / max(1e-9, lm["object_f1"]),
    }
    Console().print(summary)
    write_result(args.out, {"runs": results, "summary": summary})


if __name__ == "__main__":
    main()
