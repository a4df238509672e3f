"""Loss balance at the same budget: ``optim.clip_mode`` per_loss (two backwards of the shared-prefix step) vs
balanced (one backward; per-loss clip factors measured every ``--balance-every`` steps), optionally global
(one shared clip) as the starved reference; several seeds. Prints retrieval R@1 both ways and caption object F1
on held-out images, and the training time.

Usage: python benchmarks/loss_balance.py [--seeds 0 1 2] [--steps 150] [--modes per_loss balanced global]

Small on purpose (2 shared CPU cores): a generated shapes world of ``--train-images`` training images and
``--eval-images`` held-out retrieval images (5 captions each), the tiny model of params.yaml trained from
scratch with CAFe (alpha_lm 1, alpha_con 10, clip_norm 1, the shared-prefix step) for ``--steps`` steps of
``--batch`` pairs. Every mode of one seed starts from the same initial weights and sees the same data order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder would come first on sys.path and benchmarks/peft.py would shadow peft
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks._results import default_out, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", default=["per_loss", "balanced"],
                    choices=["per_loss", "balanced", "global"])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--balance-every", type=int, default=10)
    ap.add_argument("--train-images", type=int, default=800)
    ap.add_argument("--eval-images", type=int, default=100)
    ap.add_argument("--caption-images", type=int, default=100)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more params.yaml overrides")
    ap.add_argument("--work", default=str(ROOT / "runs/loss_balance"))
    ap.add_argument("--out", default=default_out("loss_balance"))
    args = ap.parse_args()

    import torch
    import transformers
    from rich.console import Console
    from rich.table import Table

    from cafe.config import load_params
    from cafe.data import shapes
    from cafe.data.pairs import pairs_dataset
    from cafe.data.repurpose import repurpose
    from cafe.distributed import DistEnv
    from cafe.evaluation.evaluate import evaluate
    from cafe.models import build_tiny, load_adapter
    from cafe.training.trainer import Trainer

    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work)
    p = load_params(args.params, [f"synth.out={work / 'world'}", f"synth.train_images={args.train_images}",
                                  f"synth.retrieval_images={args.eval_images}", "synth.probe_images=10",
                                  f"repurpose.input={work / 'world/train/instructions.json'}",
                                  f"repurpose.image_root={work / 'world/train'}", f"repurpose.out={work / 'pairs'}",
                                  "repurpose.workers=1", f"train.data={work / 'pairs'}",
                                  f"evaluate.data={work / 'world/eval'}", "train.step=shared_prefix",
                                  f"train.max_steps={args.steps}", f"train.batch_size={args.batch}",
                                  f"train.optim.balance_every={args.balance_every}", *args.set])
    if not (work / "world/eval").is_dir():
        shapes.generate(p.synth)
    if not (work / "pairs").is_dir():
        p.repurpose.progress = False
        repurpose(p.repurpose)
    samples = pairs_dataset(p)
    p.evaluate.parts = ["retrieval", "captions"]
    p.evaluate.max_items["captions"] = args.caption_images
    p.evaluate.report = False

    runs = []
    for seed in args.seeds:
        for mode in args.modes:
            q = p.model_copy(deep=True)
            q.train.optim.clip_mode, q.train.seed = mode, seed
            q.train.output = str(work / f"run-{mode}-{seed}")
            init = lambda s=seed: build_tiny(shapes.vocabulary_corpus(), q.synth.image_size, q.model.tiny,  # noqa: E731
                                             q.prompts, q.model, seed=s)
            start = time.perf_counter()
            model_dir = Trainer(q.train, q, DistEnv(), progress=False).fit(samples, init, resume=False)
            seconds = time.perf_counter() - start
            metrics = evaluate(load_adapter(model_dir, q.prompts, q.model), q.evaluate, q.prompts)
            log = [json.loads(line) for line in (Path(q.train.output) / "train_log.jsonl").read_text().splitlines()]
            row = {"mode": mode, "seed": seed, "train_seconds": seconds,
                   "final_loss_lm": statistics.mean(r["loss_lm"] for r in log[-10:]),
                   "final_loss_con": statistics.mean(r["loss_con"] for r in log[-10:]),
                   **{k: metrics[k] for k in ("i2t_R@1", "t2i_R@1", "object_f1")}}
            runs.append(row)
            print(json.dumps(row), flush=True)

    table = Table(title=f"loss balance: {args.steps} steps x {args.batch} pairs, shared-prefix step, "
                        f"{args.train_images} training images, held-out {args.eval_images} images x 5 captions")
    for col in ("mode", "seeds", "i2t R@1", "t2i R@1", "object F1", "L_lm (last 10)", "train s"):
        table.add_column(col, justify="right")
    summary = {}
    for mode in args.modes:
        rows = [r for r in runs if r["mode"] == mode]

        def stat(key: str) -> str:
            values = [r[key] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} ± {sd:.3f}"
        summary[mode] = {k: statistics.mean(r[k] for r in rows)
                         for k in ("i2t_R@1", "t2i_R@1", "object_f1", "final_loss_lm", "train_seconds")}
        table.add_row(mode, str(len(rows)), stat("i2t_R@1"), stat("t2i_R@1"), stat("object_f1"),
                      stat("final_loss_lm"), f"{summary[mode]['train_seconds']:.0f}")
    Console(width=150).print(table)
    write_result(args.out, {"args": vars(args), "runs": runs, "mean": summary})


if __name__ == "__main__":
    main()
