"""When does a reduced base learn yes/no, per-sample vs per-token L_lm averaging? (issue 16: the slow test of a
reduced base with a per-token control that fails).

A reduced world (``--train-images`` images of one or two objects, its own seeds) and params.yaml's model
and recipe: one vision warm-up shared by every arm, then per arm (``--arms average:seed,...``) the
language-only steps from it, a checkpoint every ``--every`` steps, and the yes/no AUC of P("Yes") on the
world's held-out POPE-format questions at each checkpoint. Reports, per arm, the first step at which the AUC
reaches ``--floor`` (the skill's arrival) and the final AUC.

Usage: python -m benchmarks.reduced_base [--arms sample:0,sample:1,sample:2,token:0] [--steps 1500]
[--workdir DIR] [--out docs/results/reduced_base.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks._results import default_out, write_result
from cafe.config import Params, load_params
from cafe.data import shapes
from cafe.data.samples import load_instruction_samples
from cafe.distributed import DistEnv
from cafe.models import load_adapter
from cafe.training.pretrain import build_base, language_stage_params, pretrain_config
from cafe.training.probes import probe
from cafe.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def reduced_params(work: Path, train_images: int, weights: list[float]) -> Params:
    """params.yaml's model and recipe on a reduced world under ``work``."""
    p = load_params(ROOT / "params.yaml")
    world = work / "world"
    p.synth = p.synth.model_copy(update={
        "out": str(world), "seed": 7, "eval_seed": 8, "dev_seed": None, "train_images": train_images,
        "retrieval_images": 20, "probe_images": 60, "object_count_weights": weights})
    p.pretrain = p.pretrain.model_copy(update={"data": str(world / "train" / "instructions.json"),
                                               "vision_steps": 300})
    return p


def arrival(rows: list[dict], floor: float) -> int | None:
    """The first checkpoint step whose yes/no AUC reaches ``floor`` (None: never)."""
    return next((r["step"] for r in sorted(rows, key=lambda r: r["step"]) if r["yesno_auc"] >= floor), None)


def parse_arms(text: str) -> list[tuple[str, int]]:
    """``"sample:0,token:0"`` -> ``[("sample", 0), ("token", 0)]``."""
    arms = []
    for item in filter(None, text.split(",")):
        average, _, seed = item.partition(":")
        if average not in ("sample", "token") or not seed.isdigit():
            raise SystemExit(f"--arms {item!r}: use AVERAGE:SEED with AVERAGE sample or token, e.g. sample:0")
        arms.append((average, int(seed)))
    return arms


def run_arm(p: Params, warmed: Path, out: Path, average: str, seed: int, steps: int, every: int) -> dict:
    """Language-only steps from the warmed model; the yes/no AUC at every checkpoint."""
    p = p.model_copy(update={"pretrain": p.pretrain.model_copy(update={
        "output": str(out), "steps": steps, "save_every": every, "lm_average": average, "seed": seed})})
    cfg = pretrain_config(p).model_copy(update={"keep_last": steps // every + 1})
    start = time.perf_counter()
    Trainer(cfg, language_stage_params(p), DistEnv()).fit(load_instruction_samples(cfg.data), str(warmed),
                                                         resume=False)
    seconds = time.perf_counter() - start
    rows = []
    for folder in sorted((out / "checkpoints").glob("checkpoint-*")):
        result = probe(load_adapter(folder, p.prompts, p.model), Path(p.synth.out) / "eval", generate=False)
        rows.append({"step": int(folder.name.rsplit("-", 1)[1]), **result})
    return {"average": average, "seed": seed, "steps": steps, "train_s": round(seconds, 1), "checkpoints": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="sample:0,sample:1,sample:2,token:0")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--weights", default="0.5,0.5,0", help="scenes of 1, 2 and 3 objects")
    ap.add_argument("--floor", type=float, default=0.75)
    ap.add_argument("--workdir", default="runs/reduced_base")
    ap.add_argument("--out", default=default_out("reduced_base"))
    args = ap.parse_args()
    arms = parse_arms(args.arms)
    work = Path(args.workdir)
    p = reduced_params(work, args.train_images, [float(w) for w in args.weights.split(",")])
    if not (Path(p.synth.out) / "eval" / "mmstar.jsonl").is_file():
        shapes.generate(p.synth)
    warmed = work / "warmed"
    if not (warmed / "config.json").is_file():  # one warm-up for every arm: only the language steps differ
        adapter, _ = build_base(p, load_instruction_samples(p.pretrain.data))
        adapter.save_pretrained(warmed)
    results = [run_arm(p, warmed, work / f"{a}-{s}", a, s, args.steps, args.every) for a, s in arms]
    print(f"\n{'arm':<10} {'train s':>8} {'AUC by step':<60} {'arrives':>8}")
    for r in results:
        curve = " ".join(f"{c['step']}:{c['yesno_auc']:.2f}" for c in r["checkpoints"])
        step = arrival(r["checkpoints"], args.floor)
        r["arrival_step"] = step
        print(f"{r['average'] + ':' + str(r['seed']):<10} {r['train_s']:>8.0f} {curve:<60} {str(step):>8}")
    print(f"\n-> {write_result(args.out, {'settings': vars(args), 'arms': results})}")


if __name__ == "__main__":
    main()
