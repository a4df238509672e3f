"""Base vs CAFe, and which L_lm source keeps the base's skills (issue 16, docs/understanding.md).

From one base, fine-tune each arm for the same budget and evaluate every model (the base included) on one
evaluation world: the suite (``cafe evaluate``: retrieval, captions, POPE, THRONE, MMStar, geometry) plus the
skill probes (``cafe.training.probes``: yes/no AUC, invalid-answer rates). Arms:

- ``pairs``: the paper's recipe, L_lm on the repurposed captions (``train.lm_source: pairs``);
- ``replay``: L_lm on the instruction mixture of the same images (``train.lm_source: replay``);
- ``control``: language-only (alpha_con 0) on the same replay mixture, same budget;
- ``captions-only``: language-only on the captions (what L_lm alone does to the answer formats).

Usage: python -m benchmarks.understanding --base models/base/model --eval data/dev/eval [--arms pairs,replay]
[--seeds 0,1,2] [-s section.key=value ...] [--out benchmarks/results/understanding.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cafe.config import load_params
from cafe.data.pairs import pairs_dataset
from cafe.distributed import DistEnv
from cafe.evaluation.evaluate import evaluate
from cafe.models import load_adapter
from cafe.training.probes import probe
from cafe.training.trainer import Trainer

ARMS = {
    "pairs": ["train.lm_source=pairs"],
    "replay": ["train.lm_source=replay"],
    "control": ["train.lm_source=replay", "train.objective.alpha_con=0.0"],
    "captions-only": ["train.lm_source=pairs", "train.objective.alpha_con=0.0"],  # language-only on the captions
}
COLUMNS = ["i2t_R@1", "t2i_R@1", "modality_gap", "object_f1", "throne_f1", "pope_avg_accuracy", "pope_avg_f1",
           "yesno_auc", "pope_invalid", "mmstar_accuracy", "mmstar_colour_accuracy", "mmstar_counting_accuracy",
           "mmstar_position_accuracy", "mmstar_invalid"]


def fine_tune(params) -> tuple[Path, float]:
    """Fine-tune ``params.train.base_model`` with ``params`` from scratch (no resume): the model and seconds."""
    start = time.perf_counter()
    model = Trainer(params.train, params, DistEnv(), progress=False).fit(pairs_dataset(params),
                                                                          params.train.base_model, resume=False)
    return model, time.perf_counter() - start


def start_sweep(ap: argparse.ArgumentParser, known: dict) -> tuple[argparse.Namespace, list[str], dict]:
    """Parse a sweep's command line (``--arms`` of ``known``: an unknown arm is a usage error naming the known
    ones), quieten transformers, and read the results an interrupted run left in ``--out``."""
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(known))
    if unknown:
        ap.error(f"unknown arm(s) {unknown}: choose from {', '.join(known)}")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("runs", {})
    return args, arms, results


def measure(model: Path, params, eval_dir: str, out: Path) -> dict:
    adapter = load_adapter(model, params.prompts, params.model)
    cfg = params.evaluate.model_copy(update={"data": eval_dir, "report": False, "cache_dir": ""})
    metrics = evaluate(adapter, cfg, params.prompts, out)
    return {**metrics, **probe(adapter, eval_dir)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", required=True, help="the base model directory")
    ap.add_argument("--eval", required=True, help="the evaluation world's eval folder (the dev world to tune)")
    ap.add_argument("--arms", default="pairs,replay,control")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--runs", default="runs/understanding", help="where the fine-tuned models go")
    ap.add_argument("-s", "--set", action="append", default=[], help="params override for every arm")
    ap.add_argument("--out", default="benchmarks/results/understanding.json")
    ap.add_argument("--skip-base", action="store_true", help="do not evaluate the base (another sweep does)")
    args = ap.parse_args()
    import transformers
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    runs = Path(args.runs)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    base_params = load_params(args.params, args.set)
    if "base" not in results and not args.skip_base:
        results["base"] = {"seeds": {"-": measure(Path(args.base), base_params, args.eval, runs / "base-metrics")}}
    for arm in [a for a in args.arms.split(",") if a]:
        for seed in args.seeds.split(","):
            if seed in results.get(arm, {}).get("seeds", {}):
                continue  # measured already: an interrupted sweep goes on
            p = load_params(args.params, args.set + ARMS[arm] + [f"train.seed={seed}", f"train.base_model={args.base}",
                                                                  f"train.output={runs}/{arm}-{seed}"])
            model, seconds = fine_tune(p)
            m = measure(model, p, args.eval, runs / f"{arm}-{seed}-metrics")
            results.setdefault(arm, {"overrides": ARMS[arm] + args.set, "seeds": {}})["seeds"][seed] = {
                **m, "train_seconds": seconds}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
            print(arm, seed, {k: round(m[k], 3) for k in COLUMNS if k in m}, f"{seconds:.0f}s", flush=True)
    for arm, entry in results.items():
        seeds = entry["seeds"].values()
        entry["mean"] = {k: float(np.mean([s[k] for s in seeds])) for k in COLUMNS if all(k in s for s in seeds)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print("| run | seeds | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for arm, entry in results.items():
        print(f"| {arm} | {len(entry['seeds'])} | " + " | ".join(f"{entry['mean'].get(k, float('nan')):.3f}"
                                                               for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
