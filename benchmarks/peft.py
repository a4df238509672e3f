"""Full fine-tuning vs LoRA vs LoRA + soft prompt (VladVA's parameter-efficient CAFe), same base, same
data, same number of steps: retrieval R@1 both ways, caption object F1, trainable parameters, peak memory
(CUDA: max allocated; CPU: peak resident set of the run's own process) and training samples/s.

Usage: python benchmarks/peft.py [--base MODEL_DIR] [--steps 60] [--out docs/results/peft.json]

Without ``--base`` it builds its own stand-in base: a short language-only pretraining of the tiny model on
a small shapes world (``--pretrain-steps``); that base captions poorly, so the absolute numbers are low and
only the comparison between the three runs means something. Each run trains in its own process so that
its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, this file's folder would come first on sys.path and this file would shadow the peft
# package; the repository root goes there instead (so its `cafe` is the one imported, too).
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks._results import default_out, write_result  # noqa: E402

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

# name -> model-section overrides and learning rate (LoRA wants a larger one than full fine-tuning)
RUNS = {
    "full fine-tuning": {"overrides": [], "lr": 5e-4, "lr_vision": 1e-4},
    "LoRA": {"overrides": ["model.lora.enabled=true", "model.lora.r=8", "model.lora.alpha=16"], "lr": 3e-3,
             "lr_vision": 3e-3},
    "LoRA + soft prompt": {"overrides": ["model.lora.enabled=true", "model.lora.r=8", "model.lora.alpha=16",
                                         "model.soft_prompt.tokens=4"], "lr": 3e-3, "lr_vision": 3e-3},
}


def _quiet() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _world_overrides(work: Path) -> list[str]:
    shapes = work / "shapes"
    return [f"synth.out={shapes}", "synth.train_images=800", "synth.retrieval_images=120", "synth.probe_images=40",
            f"repurpose.input={shapes}/train/instructions.json", f"repurpose.image_root={shapes}/train",
            f"repurpose.out={work}/pairs", f"train.data={work}/pairs", f"evaluate.data={shapes}/eval",
            f"pretrain.data={shapes}/train/instructions.json"]


def prepare(args, console: Console) -> str:
    """Shapes world, pairs, and (without --base) the short language-only base. Returns the base path."""
    from cafe.config import load_params
    from cafe.data import shapes
    from cafe.data.repurpose import repurpose
    from cafe.distributed import DistEnv
    from cafe.training.pretrain import pretrain

    work = Path(args.work)
    p = load_params(args.params, _world_overrides(work) + [
        f"pretrain.output={work}/base", f"pretrain.steps={args.pretrain_steps}"])
    if not (work / "shapes" / "eval" / "retrieval_karpathy.json").is_file():
        shapes.generate(p.synth)
    repurpose(p.repurpose)
    if args.base:
        return args.base
    base = work / "base" / "model"
    if not base.is_dir():
        console.print(f"no --base: pretraining a stand-in base language-only for {args.pretrain_steps} steps "
                      "(small scale; absolute scores are low, compare the runs with each other)")
        start = time.perf_counter()
        pretrain(p, DistEnv(), resume=True)
        console.print(f"base ready in {time.perf_counter() - start:.0f}s")
    return str(base)


def one_run(args) -> None:
    """Train and evaluate one configuration in this process; print its result as JSON on the last line."""
    from cafe.config import load_params
    from cafe.data.pairs import pairs_dataset
    from cafe.distributed import DistEnv
    from cafe.evaluation.evaluate import evaluate
    from cafe.models import load_adapter
    from cafe.training.trainer import Trainer

    _quiet()
    torch.set_num_threads(args.threads)
    spec = RUNS[args.run]
    work = Path(args.work)
    out = work / "runs" / args.run.replace(" ", "_").replace("+", "plus")
    p = load_params(args.params, _world_overrides(work) + spec["overrides"] + [
        f"train.output={out}", f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
        f"train.optim.lr={spec['lr']}", f"train.optim.lr_vision={spec['lr_vision']}", "train.save_every=0"])
    samples = pairs_dataset(p)
    adapter = load_adapter(args.base_path, p.prompts, p.model)
    trainable = sum(x.numel() for x in adapter.model.parameters() if x.requires_grad)
    total = sum(x.numel() for x in adapter.model.parameters())
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model_dir = Trainer(p.train, p, DistEnv(), progress=False).fit(samples, lambda: adapter, resume=False)
    seconds = time.perf_counter() - start
    peak_mb = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in log[1:]] or [log[0]["samples_per_s"]]
    metrics = evaluate(load_adapter(model_dir, p.prompts, p.model), p.evaluate, p.prompts)
    saved_mb = sum(f.stat().st_size for f in Path(model_dir).iterdir() if f.suffix == ".safetensors") / 2**20
    print(json.dumps({"run": args.run, "trainable_params": trainable, "total_params": total,
                      "peak_memory_mb": peak_mb, "memory_kind": "cuda_max_allocated" if cuda else "cpu_peak_rss",
                      "samples_per_s": sum(rates) / len(rates), "train_seconds": seconds, "saved_weights_mb": saved_mb,
                      "final_loss_lm": log[-1].get("loss_lm"), "final_loss_con": log[-1].get("loss_con"), **metrics}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default=None, help="a full base checkpoint (default: pretrain a stand-in)")
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=60, help="fine-tuning steps, the same for every run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/bench-peft")
    ap.add_argument("--out", default=default_out("peft"))
    ap.add_argument("--run", choices=list(RUNS), help=argparse.SUPPRESS)  # internal: one run per process
    ap.add_argument("--base-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        one_run(args)
        return

    _quiet()
    torch.set_num_threads(args.threads)
    console = Console()
    base = prepare(args, console)
    results = []
    for name in RUNS:
        cmd = [sys.executable, __file__, "--run", name, "--base-path", base, "--params", args.params,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--work", args.work]
        console.print(f"[bold]{name}[/bold]: {args.steps} steps x {args.batch_size} pairs ...")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            console.print(done.stderr[-3000:])
            raise SystemExit(f"run {name!r} failed")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        console.print(f"  i2t R@1 {r['i2t_R@1']:.3f}  t2i R@1 {r['t2i_R@1']:.3f}  object F1 {r['object_f1']:.3f}  "
                      f"({r['train_seconds']:.0f}s)")

    table = Table(title=f"parameter-efficient CAFe: same base, {args.steps} steps x {args.batch_size} pairs")
    for col in ("run", "i2t R@1", "t2i R@1", "object F1", "trainable params", "% of model", "peak MB",
                "samples/s", "saved MB"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in results:
        table.add_row(r["run"], f"{r['i2t_R@1']:.3f}", f"{r['t2i_R@1']:.3f}", f"{r['object_f1']:.3f}",
                      f"{r['trainable_params']:,}", f"{100 * r['trainable_params'] / r['total_params']:.1f}",
                      f"{r['peak_memory_mb']:.0f}", f"{r['samples_per_s']:.1f}", f"{r['saved_weights_mb']:.2f}")
    console.print(table)
    base_note = args.base or f"stand-in: tiny model pretrained language-only for {args.pretrain_steps} steps"
    console.print(f"base: {base_note}; peak memory: {results[0]['memory_kind']}")
    out = write_result(args.out, {"base": base_note, "steps": args.steps, "batch_size": args.batch_size,
                                  "device": "cuda" if torch.cuda.is_available() else "cpu", "runs": results})
    console.print(f"-> {out}")


if __name__ == "__main__":
    main()
