"""End-to-end samples/s of the main job's CAFe stage (``cafe.stages.train.train``, the embedded default config)
with the three-pass step and per-loss clipping (the default today), the shared-prefix step with the
``balanced`` loss balance (or with ``per_loss``: ``--modes``), and a language-only fine-tune (alpha_con 0) of the same base on the same L_lm data.

Usage: python benchmarks/e2e.py [--steps 20] [--rounds 1] [--train-images 640] [--threads 1]
[-s section.key=value ...] [--out docs/results/e2e.json]

params.yaml as it is (model, batch 64, replayed L_lm mixture, per-sample averaging, learning rates), with a
generated shapes world of ``--train-images`` images and its repurposed pairs in a temporary folder, a fixed
``train.max_steps`` and no validation (``train.eval_every: 0``). The base is a tiny model built from config
(``model.tiny``) and saved once: every run loads the same checkpoint, as the stage loads a trained base. The
modes run one after another in this process, ``--rounds`` times in turn, so other load on the shared cores
hits them alike. Reported per mode: the stage's samples/s over the whole call (loading, every step, saving
the model), the median of the per-step rates in ``train_log.jsonl`` (wall), and samples per second of process
CPU time over the whole call (with ``--threads 1`` the work itself, whatever else the cores run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder would come first on sys.path and benchmarks/peft.py would shadow peft
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks._results import default_out, write_result  # noqa: E402

MODES = {
    "language_only": ["train.objective.alpha_con=0.0"],
    "three_pass_per_loss": ["train.step=three_pass", "train.optim.clip_mode=per_loss"],
    "shared_prefix_per_loss": ["train.step=shared_prefix", "train.optim.clip_mode=per_loss"],
    "shared_prefix_balanced": ["train.step=shared_prefix", "train.optim.clip_mode=balanced"],
}
DEFAULT_MODES = ["language_only", "three_pass_per_loss", "shared_prefix_balanced"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--train-images", type=int, default=640)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=list(MODES))
    ap.add_argument("-s", "--set", action="append", default=[], help="params override for every mode")
    ap.add_argument("--out", default=default_out("e2e"))
    args = ap.parse_args()

    import torch
    import transformers
    from rich.console import Console
    from rich.table import Table

    from cafe.config import load_params
    from cafe.data import shapes
    from cafe.data.repurpose import repurpose
    from cafe.distributed import DistEnv
    from cafe.models import build_tiny
    from cafe.stages.train import train

    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="cafe-e2e-"))
    world = work / "shapes"
    setup = [f"synth.out={world}", f"synth.train_images={args.train_images}", "synth.retrieval_images=20",
             "synth.probe_images=10", f"repurpose.input={world}/train/instructions.json",
             f"repurpose.image_root={world}/train", f"repurpose.out={work}/pairs", "repurpose.workers=1",
             "repurpose.progress=false", f"train.data={work}/pairs",
             f"train.replay.data={world}/train/instructions.json", f"train.max_steps={args.steps}",
             "train.eval_every=0", "train.save_every=0"]
    p = load_params(args.params, setup + args.set)
    shapes.generate(p.synth)
    repurpose(p.repurpose)
    base = work / "base"
    build_tiny(shapes.vocabulary_corpus(), p.synth.image_size, p.model.tiny, p.prompts, p.model,
               seed=0).save_pretrained(base)

    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for r in range(args.rounds):
        for mode in args.modes:
            out = work / f"{mode}-{r}"
            mp = load_params(args.params, setup + args.set + MODES[mode] + [f"train.output={out}"])
            wall, cpu = time.perf_counter(), time.process_time()
            train(mp, base_model=base, resume=False, dist=DistEnv(), progress=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
            samples = mp.train.batch_size * len(log)
            runs[mode].append({"steps": len(log), "samples": samples, "wall_s": wall, "cpu_s": cpu,
                               "stage_samples_per_s": samples / wall, "cpu_samples_per_s": samples / cpu,
                               "median_step_samples_per_s": statistics.median(x["samples_per_s"] for x in log),
                               "loss_lm_last": log[-1].get("loss_lm"), "loss_con_last": log[-1].get("loss_con")})
            print(mode, r, {k: round(v, 2) for k, v in runs[mode][-1].items() if isinstance(v, float)}, flush=True)

    keys = ("stage_samples_per_s", "median_step_samples_per_s", "cpu_samples_per_s")
    summary = {mode: {k: statistics.median(x[k] for x in rs) for k in keys} for mode, rs in runs.items()}
    ref = summary.get("language_only")
    table = Table(title=f"CAFe stage, embedded default, {args.steps} steps of {p.train.batch_size}, "
                        f"{args.threads} thread(s), {args.rounds} round(s)")
    for col in ("mode", "stage samples/s", "median step samples/s", "samples / CPU s", "CPU cost vs language-only"):
        table.add_column(col, justify="right")
    for mode, s in summary.items():
        if ref:
            s["cpu_cost_vs_language_only"] = ref["cpu_samples_per_s"] / s["cpu_samples_per_s"]
        table.add_row(mode, f"{s['stage_samples_per_s']:.1f}", f"{s['median_step_samples_per_s']:.1f}",
                      f"{s['cpu_samples_per_s']:.1f}", f"{s.get('cpu_cost_vs_language_only', float('nan')):.2f}x")
    Console().print(table)
    write_result(args.out, {"steps": args.steps, "rounds": args.rounds, "train_images": args.train_images,
                            "threads": args.threads, "batch_size": p.train.batch_size, "overrides": args.set,
                            "modes": MODES, "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
