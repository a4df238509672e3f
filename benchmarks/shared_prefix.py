"""One forward for both objectives: step time and peak memory of a language-only step, the three-pass CAFe
step and the shared-prefix CAFe step, side by side, plus the analytic forward FLOPs per sample of the real
LLaVA-OneVision 0.5B and 7B at 1 and 10 crops.

Usage: python benchmarks/shared_prefix.py [--models embedded ov-0.5b-shapes] [--batch 4] [--out docs/results/shared_prefix.json]

Models: ``embedded`` is the embedded default's tiny model (params.yaml: 96 px, 9 image tokens);
``ov-0.5b-shapes`` has LLaVA-OneVision-0.5B's layer sizes (Qwen2: hidden 896, 14 heads, 2 KV heads,
intermediate 4864, vocabulary 151,936; SigLIP: 1152 wide, 16 heads, patch 14 at 378 px = 729 tokens per
crop) shrunk in depth (2 LM layers, 1 vision layer) to fit CPU time. A step here is the terms' forwards and
backwards (``loss_terms`` run in order, ``optim.clip_mode: global`` so the shared-prefix step back-propagates
once; ``per_loss`` is measured too); the optimizer update is the same for every mode and left out. Each
(model, mode) runs in its own process (its ``ru_maxrss`` is its own): a warm-up step, then the median of
``--repeats`` timed steps. Images are random, captions distinct.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder would come first on sys.path and benchmarks/peft.py would shadow peft
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks._results import default_out, write_result  # noqa: E402

MODES = ("language_only", "three_pass", "shared_prefix", "shared_prefix_per_loss")
MODELS = {
    "embedded": {"image_size": 96, "tiny": {"patch_size": 32}, "vocab": None},
    "ov-0.5b-shapes": {"image_size": 378, "vocab": 151936, "tiny": {
        "vision_hidden": 1152, "vision_layers": 1, "vision_heads": 16, "patch_size": 14, "text_hidden": 896,
        "text_layers": 2, "text_heads": 14, "text_kv_heads": 2, "text_intermediate": 4864, "max_positions": 4096}},
}

# ---------------------------------------------------------------------------- analytic forward FLOPs
SIGLIP = {"hidden": 1152, "layers": 26, "intermediate": 4304, "tokens": 729}  # so400m-patch14-384, as in OV
REAL = {
    "0.5B": {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "intermediate": 4864, "vocab": 151936},
    "7B": {"hidden": 3584, "layers": 28, "heads": 28, "kv_heads": 4, "intermediate": 18944, "vocab": 152064},
}
# token counts of the prompts (ChatML with a system turn, a one-sentence caption as the answer)
SYSTEM, INSTRUCTION, ANSWER, EMBED_PROMPT, TEXT_EMBED = 20, 12, 30, 12, 45


def _vision_flops(crops: int) -> float:
    d, n, ff = SIGLIP["hidden"], SIGLIP["tokens"], SIGLIP["intermediate"]
    per_layer = n * 2 * (4 * d * d + 2 * d * ff) + 4 * n * n * d
    return crops * SIGLIP["layers"] * per_layer


def _lm_flops(cfg: dict, queries_keys: list[tuple[int, int]], head_positions: int) -> float:
    """``queries_keys``: (number of query tokens, keys each attends on average) per block of the sequence."""
    d, ff, kv = cfg["hidden"], cfg["intermediate"], cfg["hidden"] * cfg["kv_heads"] // cfg["heads"]
    dense = 2 * (2 * d * d + 2 * d * kv + 3 * d * ff)
    tokens = sum(q for q, _ in queries_keys)
    attention = sum(4 * q * k * d for q, k in queries_keys)
    return cfg["layers"] * (tokens * dense + attention) + 2 * d * cfg["vocab"] * head_positions


def _causal(n: int, before: int = 0) -> tuple[int, float]:
    return n, before + (n + 1) / 2


def forward_flops(name: str, crops: int) -> dict:
    """Forward FLOPs per sample of each step (LM head at labelled positions only; projector included)."""
    cfg = REAL[name]
    image = crops * SIGLIP["tokens"]
    prefix = SYSTEM + image
    projector = crops * SIGLIP["tokens"] * 2 * (SIGLIP["hidden"] * cfg["hidden"] + cfg["hidden"] ** 2)
    vision = _vision_flops(crops) + projector
    lm_seq = [_causal(prefix + INSTRUCTION + ANSWER)]
    language = vision + _lm_flops(cfg, lm_seq, ANSWER)
    text = _lm_flops(cfg, [_causal(TEXT_EMBED)], 0)
    image_pass = vision + _lm_flops(cfg, [_causal(prefix + EMBED_PROMPT)], 0)
    shared = vision + _lm_flops(cfg, [_causal(prefix), _causal(INSTRUCTION + ANSWER, prefix),
                                      _causal(EMBED_PROMPT, prefix)], ANSWER)
    rows = {"language_only": language, "three_pass": language + image_pass + text, "shared_prefix": shared + text}
    return {"model": name, "crops": crops, "image_tokens": image,
            **{f"{k}_gflop": v / 1e9 for k, v in rows.items()},
            **{f"{k}_x": v / language for k, v in rows.items()}}


# ---------------------------------------------------------------------------- measured steps
def measure(model: str, mode: str, batch: int, repeats: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from cafe.config import Params
    from cafe.data import shapes
    from cafe.models import build_tiny
    from cafe.training.step import loss_terms

    torch.manual_seed(0)
    spec = MODELS[model]
    p = Params()
    p.synth.image_size = spec["image_size"]
    p.model.tiny = p.model.tiny.model_copy(update=spec["tiny"])
    adapter = build_tiny(shapes.vocabulary_corpus(), spec["image_size"], p.model.tiny, p.prompts, p.model, seed=0)
    if spec["vocab"]:
        adapter.model.resize_token_embeddings(spec["vocab"])
    cfg = p.train.model_copy(deep=True)
    cfg.optim.clip_mode = "per_loss" if mode == "shared_prefix_per_loss" else "global"
    cfg.step = "three_pass" if mode in ("language_only", "three_pass") else "shared_prefix"
    if mode == "language_only":
        cfg.objective.alpha_con = 0.0
    rng = np.random.default_rng(0)
    colours, things = list(shapes.COLOURS), list(shapes.SHAPES)
    size = spec["image_size"]
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(batch)]
    captions = [f"a {colours[i % len(colours)]} {things[i % len(things)]} and a "
                f"{colours[(i + 3) % len(colours)]} {things[(i + 1) % len(things)]}, {shapes.NUMBER_WORDS[1 + i % 3]} "
                f"of them {' large' * (i % 4)}" for i in range(batch)]
    data = {"images": images, "prompts": [p.prompts.caption] * batch, "answers": captions, "captions": captions}
    image_tokens = int((adapter.lm_inputs(images[:1], data["prompts"][:1], captions[:1])["input_ids"]
                        == adapter.processor.image_token_id).sum())

    def step() -> float:
        start = time.perf_counter()
        for run in loss_terms(adapter, data, cfg).values():
            run()
        adapter.model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()
    seconds = statistics.median(step() for _ in range(repeats))
    return {"model": model, "mode": mode, "batch": batch, "image_tokens": image_tokens, "seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=default_out("shared_prefix"))
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # model mode batch repeats: child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], int(args.one[2]), int(args.one[3]))))
        return

    from rich.console import Console
    from rich.table import Table
    from tqdm.auto import tqdm

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    rows = []
    for model, mode in tqdm([(m, k) for m in args.models for k in MODES], desc="runs", unit="run"):
        proc = subprocess.run([sys.executable, __file__, "--one", model, mode, str(args.batch), str(args.repeats)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{model} {mode} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    console = Console(width=150)
    table = Table(title=f"one step (forwards + backwards), batch {args.batch}, 1 process, "
                        f"{env['OMP_NUM_THREADS']} thread(s), CPU fp32")
    for col in ("model", "image tokens", "mode", "s / step", "x language-only", "peak RSS MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["mode"] == "language_only")
        r["x_language_only"] = r["seconds"] / base["seconds"]
        table.add_row(r["model"], str(r["image_tokens"]), r["mode"], f"{r['seconds']:.2f}",
                      f"{r['x_language_only']:.2f}", f"{r['peak_rss_mib']:.0f}")
    console.print(table)

    flops = [forward_flops(name, crops) for name in REAL for crops in (1, 10)]
    ftable = Table(title="analytic forward GFLOP per sample (real configurations, LM head at labels only)")
    for col in ("model", "crops", "image tokens", "language-only", "three-pass", "shared-prefix", "3-pass x", "shared x"):
        ftable.add_column(col, justify="right")
    for f in flops:
        ftable.add_row(f["model"], str(f["crops"]), str(f["image_tokens"]), f"{f['language_only_gflop']:.0f}",
                       f"{f['three_pass_gflop']:.0f}", f"{f['shared_prefix_gflop']:.0f}", f"{f['three_pass_x']:.3f}",
                       f"{f['shared_prefix_x']:.3f}")
    console.print(ftable)
    write_result(args.out, {"batch": args.batch, "threads": env["OMP_NUM_THREADS"], "steps": rows,
                            "forward_flops": flops})


if __name__ == "__main__":
    main()
