"""Can the embedded base learn relative position? (issue 16: MMStar-format position stays at chance).

The shapes world's position questions ("Where is the red circle relative to the blue square?", options left /
right / above / below) are 782 of the 20,000 training records. This spike asks whether more of them would
teach the skill: from the base, language-only (as pretraining: tower and projector frozen, per-sample L_lm),

- ``mix``: the pretraining records plus every position question the training images can pose (each ordered
  pair of objects sharing a row or a column, options shuffled);
- ``only``: those position questions alone (the most the data can say about the skill).

Each model, the base included, is measured on ``--eval``: MMStar-format accuracy per category, POPE, and how
often the detailed descriptions (THRONE) put a correctly named object in the right cell of the 3x3 grid
(against the world's ``annotations.json``): whether the absolute positions the relation is made of are there.

Usage: python -m benchmarks.position --base models/base/model [--eval data/shapes/dev] [--arms mix,only]
[--steps 800,1500] [--lr 1e-3,2e-3] [--out docs/results/position_spike.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from benchmarks import understanding
from benchmarks._results import default_out, write_result
from benchmarks.tradeoff import losses
from cafe.config import load_params
from cafe.data.samples import Sample, load_instruction_samples
from cafe.data.shapes import objects_from_description, position_pairs, position_question
from cafe.distributed import DistEnv
from cafe.training.pretrain import language_stage_params, pretrain_config
from cafe.training.trainer import Trainer

ARMS = {"mix": "the pretraining records + every position question", "only": "the position questions alone"}
COLUMNS = ["mmstar_accuracy", "mmstar_colour_accuracy", "mmstar_counting_accuracy", "mmstar_position_accuracy",
           "mmstar_invalid_rate", "pope_avg_accuracy", "absolute_position_accuracy"]


def position_samples(samples: list[Sample], seed: int = 0) -> list[Sample]:
    """Every position question the images of ``samples`` pose, read from their detailed descriptions."""
    rng = random.Random(seed)
    out = []
    for s in samples:
        objects = objects_from_description(s.answer) if s.id.endswith("-detail") else []
        for a, b in position_pairs(objects):
            question, letter = position_question(a, b, rng)
            out.append(Sample(id=f"{s.id}-position{len(out)}", image=s.image, prompt=question, answer=letter))
    return out


def absolute_position_accuracy(descriptions: Path, annotations: Path) -> tuple[float, int]:
    """Of the objects a model's descriptions name correctly (colour and shape present), the share placed in the
    right cell; and how many were named."""
    truth = {image: {(o["colour"], o["shape"]): o["position"] for o in objects}
             for image, objects in json.loads(annotations.read_text()).items()}
    named = right = 0
    for line in descriptions.read_text().splitlines():
        record = json.loads(line)
        cells = truth.get(record["image"], {})
        for o in objects_from_description(record["description"]):
            if (o.colour, o.shape) in cells:
                named += 1
                right += cells[(o.colour, o.shape)] == o.position
    return (right / named if named else 0.0), named


def measure(model: str | Path, params, eval_dir: str, out: Path) -> dict:
    """The main job's understanding measurement (``params.evaluate.parts``), plus the absolute positions."""
    metrics = understanding.measure(Path(model), params, eval_dir, out)
    accuracy, named = absolute_position_accuracy(out / "descriptions.jsonl", Path(eval_dir) / "annotations.json")
    return {**{k: metrics[k] for k in COLUMNS if k in metrics}, "absolute_position_accuracy": accuracy,
            "objects_named": named}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default="models/base/model")
    ap.add_argument("--eval", default="data/shapes/dev")
    ap.add_argument("--arms", default="mix,only")
    ap.add_argument("--steps", default="800,1500", help="language-only steps, one per arm")
    ap.add_argument("--lr", default="1e-3,2e-3", help="peak learning rate, one per arm")
    ap.add_argument("--runs", default="runs/position")
    ap.add_argument("--out", default=default_out("position_spike"))
    args, arms, results = understanding.start_sweep(ap, ARMS)
    steps, lrs = [int(s) for s in args.steps.split(",")], [float(x) for x in args.lr.split(",")]
    if not len(steps) == len(lrs) == len(arms):
        ap.error(f"--steps and --lr need one value per arm ({len(arms)})")
    params = load_params(args.params, [])
    params.evaluate.parts = ["mmstar", "pope", "throne"]  # the descriptions the absolute positions are read from
    runs = Path(args.runs)
    if "base" not in results["runs"]:
        results["runs"]["base"] = {"arm": "base", **measure(args.base, params, args.eval, runs / "base-metrics")}
        write_result(args.out, results)
    samples = load_instruction_samples(params.pretrain.data)
    extra = position_samples(samples)
    results["records"] = {"pretraining": len(samples), "position_questions": len(extra),
                          "position_in_pretraining": sum("relative to the" in s.prompt for s in samples)}
    for arm, n, lr in zip(arms, steps, lrs):
        key = f"{arm}-{n}@{lr:g}"
        if key in results["runs"]:
            continue
        cfg = pretrain_config(params)
        cfg = cfg.model_copy(update={"max_steps": n, "output": str(runs / key), "save_every": 0,
                                     "optim": cfg.optim.model_copy(update={"lr": lr, "lr_vision": lr})})
        start = time.perf_counter()
        model = Trainer(cfg, language_stage_params(params), DistEnv(), progress=False).fit(
            samples + extra if arm == "mix" else extra, args.base, resume=False)
        row = {"arm": arm, "label": ARMS[arm], "steps": n, "lr": lr, "train_seconds": time.perf_counter() - start}
        metrics = measure(model, params, args.eval, runs / f"{key}-metrics")
        results["runs"][key] = {**row, **losses(runs / key, window=50), **metrics}
        write_result(args.out, results)
    write_result(args.out, results)
    heads = ["MMStar", "colour", "counting", "position", "invalid", "POPE acc", "abs. pos.", "L_lm first", "L_lm last"]
    print(f"{'run':<18}" + "".join(f"{h:>11}" for h in heads))
    for key, row in results["runs"].items():
        cells = [row.get(c, float("nan")) for c in [*COLUMNS, "loss_lm_first", "loss_lm_last"]]
        print(f"{key:<18}" + "".join(f"{c:>11.3f}" for c in cells))


if __name__ == "__main__":
    main()
