"""One forward for both objectives: time and peak memory of one training step (forwards, backwards, clipping and
the AdamW update, through ``DDPStrategy.step``) of a language-only fine-tune, the three-pass CAFe step and the
shared-prefix CAFe step under each loss balance, side by side; a breakdown of the shared-prefix step of the
embedded model; and the analytic forward FLOPs per sample of the real LLaVA-OneVision 0.5B and 7B at 1 and 10 crops.

Usage: python benchmarks/shared_prefix.py [--models embedded ov-0.5b-shapes] [--batch 2] [--out docs/results/shared_prefix.json]

Models: ``embedded`` is the embedded default's tiny model (params.yaml: 96 px, 9 image tokens);
``ov-0.5b-shapes`` has LLaVA-OneVision-0.5B's layer sizes (Qwen2: hidden 896, 14 heads, 2 KV heads,
intermediate 4864, vocabulary 151,936; SigLIP: 1152 wide, 16 heads, patch 14 at 378 px = 729 tokens per
crop) shrunk in depth (2 LM layers, 1 vision layer) to fit CPU time. Modes (``MODES``): language-only
(alpha_con 0), three-pass with per-loss clipping (today's default), shared-prefix with per-loss clipping (two
backwards), with one global clip (one backward) and with ``clip_mode: balanced`` (one backward, plus the
per-loss measuring step every ``--balance-every`` steps: its time is the amortised mean of both kinds of step,
each measured). Each model runs in its own process with its modes interleaved round by round (other load on
the machine hits them alike): a warm-up round, then the median of ``--repeats`` rounds; memory is each mode's
largest growth during a step (resident set sampled on CPU, the allocator's peak on CUDA); on CPU the time is the
process CPU time (one thread), which other jobs on the cores do not inflate. Images are random,
captions distinct. ``benchmarks/gpu_check.py`` runs the same measurement on a GPU.
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

MODES = ("language_only", "three_pass", "shared_prefix_per_loss", "shared_prefix_global", "shared_prefix_balanced")
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
def build(model: str, device: str = "cpu", **overrides):
    """The adapter of ``MODELS[model]`` (``overrides``: more TinyModelConfig fields, e.g. full depth on a GPU)."""
    import torch

    from cafe.config import Params
    from cafe.data import shapes
    from cafe.models import build_tiny

    torch.manual_seed(0)
    spec = MODELS[model]
    p = Params()
    p.synth.image_size = spec["image_size"]
    p.model.tiny = p.model.tiny.model_copy(update={**spec["tiny"], **overrides})
    adapter = build_tiny(shapes.vocabulary_corpus(), spec["image_size"], p.model.tiny, p.prompts, p.model, seed=0)
    if spec["vocab"]:
        adapter.model.resize_token_embeddings(spec["vocab"])
    adapter.model.to(device)
    return adapter, p


def batch_of(p, adapter, batch: int) -> dict:
    """``batch`` random images with distinct captions of several lengths."""
    import numpy as np
    from PIL import Image

    from cafe.data import shapes

    rng = np.random.default_rng(0)
    colours, things = list(shapes.COLOURS), list(shapes.SHAPES)
    size = p.synth.image_size
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(batch)]
    captions = [f"a {colours[i % len(colours)]} {things[i % len(things)]} and a "
                f"{colours[(i + 3) % len(colours)]} {things[(i + 1) % len(things)]}, {shapes.NUMBER_WORDS[1 + i % 3]} "
                f"of them {' large' * (i % 4)}" for i in range(batch)]
    return {"images": images, "prompts": [p.prompts.caption] * batch, "answers": captions, "captions": captions}


def configure(p, mode: str, balance_every: int = 10):
    """The TrainConfig of one mode (bf16 autocast applies on CUDA only, as in training)."""
    cfg = p.train.model_copy(deep=True)
    cfg.step = "three_pass" if mode in ("language_only", "three_pass") else "shared_prefix"
    cfg.optim.clip_mode = {"language_only": "global", "shared_prefix_global": "global",
                           "shared_prefix_balanced": "balanced"}.get(mode, "per_loss")
    cfg.optim.balance_every = balance_every
    cfg.optim.lr = cfg.optim.lr_vision = 1e-6  # updates as small as a real run's; the time does not depend on it
    if mode == "language_only":
        cfg.objective.alpha_con = 0.0
    return cfg


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory growth over a block: on CUDA the allocator's peak; on CPU the resident set, sampled every
    2 ms by a thread (torch's kernels release the GIL), minus the level at the start."""

    def __init__(self, device):
        self.device, self.peak_mib = device, 0.0

    def __enter__(self):
        import threading

        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start, self.high, self.done = _rss(), _rss(), threading.Event()

        def sample():
            while not self.done.wait(0.002):
                self.high = max(self.high, _rss())
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        else:
            self.done.set()
            self.thread.join()
            self.peak_mib = (max(self.high, _rss()) - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def time_modes(adapter, p, data: dict, modes, repeats: int, balance_every: int = 10) -> list[dict]:
    """Seconds per training step of each mode through DDPStrategy.step, in ONE process on ONE model, the modes
    interleaved round by round (so that other load on the machine hits them alike): a warm-up round, then
    the median of ``repeats`` rounds, and each mode's largest memory growth during a step. On CPU the time is the
    process's CPU time (one thread: the work done, not the waiting for cores other jobs hold); on CUDA wall time. The modes share one
    AdamW (its state is allocated in the warm-up). For ``shared_prefix_balanced`` the time is the mean over a
    period of ``balance_every`` steps: the median one-backward step and a measuring step, both timed here."""
    import statistics
    import time

    from cafe.distributed import DistEnv
    from cafe.training.step import loss_terms
    from cafe.training.strategy import DDPStrategy

    device = adapter.device
    cfgs = {mode: configure(p, mode, repeats + 1) for mode in modes}  # "balanced": measuring after the timed rounds
    strategies = {mode: DDPStrategy(adapter.model, cfg, DistEnv(device=device), total_steps=10 * (repeats + 2))
                  for mode, cfg in cfgs.items()}
    first = strategies[modes[0]]
    for strategy in strategies.values():
        strategy.optimizer, strategy.scheduler = first.optimizer, first.scheduler
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    peaks: dict[str, float] = {mode: 0.0 for mode in modes}

    def step(mode: str) -> float:
        strategy = strategies[mode]
        if device.type == "cuda":  # each step on its GPU kernels: FlexAttention for the packed one, else SDPA
            want = "flex_attention" if mode.startswith("shared_prefix") else "sdpa"
            if adapter.model.config._attn_implementation != want:
                adapter.model.set_attn_implementation(want)
        _sync(device)
        with PeakMemory(device) as memory:
            start, cpu = time.perf_counter(), time.process_time()
            strategy.step(loss_terms(adapter, data, cfgs[mode], strategy.backward))
            _sync(device)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        peaks[mode] = max(peaks[mode], memory.peak_mib)
        walls[mode].append(wall)
        return wall if device.type == "cuda" else cpu

    for mode in modes:  # warm-up (the first step of "balanced" is a measuring one; AdamW allocates its state)
        step(mode)
        peaks[mode], walls[mode] = 0.0, []
    for _ in range(repeats):
        for mode in modes:
            times[mode].append(step(mode))
    rows = []
    for mode in modes:
        row = {"mode": mode, "seconds": statistics.median(times[mode]), "all_seconds": times[mode],
               "clock": "wall" if device.type == "cuda" else "process_cpu", "wall_seconds": walls[mode],
               "step_peak_growth_mib": peaks[mode]}
        if mode == "shared_prefix_balanced":
            measuring = step(mode)
            row.update(one_backward_seconds=row["seconds"], measuring_seconds=measuring, balance_every=balance_every,
                       seconds=((balance_every - 1) * row["seconds"] + measuring) / balance_every)
        rows.append(row)
    return rows


def breakdown(adapter, p, data: dict, repeats: int) -> dict:
    """Forward + backward seconds of the parts of a shared-prefix step: vision tower + projector, the text
    embedding pass, the contrastive loss; the packed language model (prefix, both continuations, LM head) is
    what remains of the whole step's terms (no optimizer update here)."""
    import statistics
    import time

    import torch

    from cafe.distributed import gather
    from cafe.objective import caption_ids, info_nce
    from cafe.training import shared_prefix
    from cafe.training.step import loss_terms

    cfg = configure(p, "shared_prefix_global")
    model = adapter.model
    device = adapter.device
    packed = shared_prefix.pack(adapter, data["images"], data["prompts"], data["answers"])
    vision_inputs = {k: v for k, v in packed["pixels"].items() if k in ("pixel_values", "image_sizes", "image_grid_thw")}

    def vision():
        out = model.model.get_image_features(**vision_inputs)
        feats = getattr(out, "pooler_output", out)
        sum(f.float().sum() for f in (feats if isinstance(feats, (list, tuple)) else [feats])).backward()

    def text():
        adapter.embed(adapter.text_embed_inputs(data["captions"])).sum().backward()

    n, dim = len(data["captions"]), model.config.get_text_config().hidden_size
    image = torch.nn.functional.normalize(torch.randn(n, dim, device=device), dim=-1).requires_grad_()
    text_emb = torch.nn.functional.normalize(torch.randn(n, dim, device=device), dim=-1).requires_grad_()

    def contrastive():
        ids = gather(caption_ids(data["captions"]).to(device))
        info_nce(image, text_emb, cfg.objective.temperature, ids, cfg.objective.directions).backward()

    def whole():
        for run in loss_terms(adapter, data, cfg).values():
            run()

    def timed(fn) -> float:
        def once() -> float:
            model.zero_grad(set_to_none=True)
            _sync(device)
            clock = time.perf_counter if device.type == "cuda" else time.process_time
            start = clock()
            fn()
            _sync(device)
            return clock() - start
        once()
        return statistics.median(once() for _ in range(repeats))

    parts = {"vision": timed(vision), "text_embedding": timed(text), "contrastive": timed(contrastive)}
    total = timed(whole)
    parts["language_model"] = max(0.0, total - sum(parts.values()))
    return {"terms_seconds": total, **{f"{k}_seconds": v for k, v in parts.items()},
            **{f"{k}_share": v / total for k, v in parts.items()}}


def measure(model: str, modes, batch: int, repeats: int, balance_every: int = 10) -> list[dict]:
    import resource

    adapter, p = build(model)
    data = batch_of(p, adapter, batch)
    image_tokens = int((adapter.lm_inputs(data["images"][:1], data["prompts"][:1], data["captions"][:1])["input_ids"]
                        == adapter.processor.image_token_id).sum())
    head = {"model": model, "batch": batch, "image_tokens": image_tokens}
    rows = [{**head, **row} for row in time_modes(adapter, p, data, list(modes), repeats, balance_every)]
    if model == "embedded":
        rows.append({**head, "mode": "breakdown", **breakdown(adapter, p, data, repeats)})
    for row in rows:
        row["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--balance-every", type=int, default=10)
    ap.add_argument("--out", default=default_out("shared_prefix"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # model: the child process that measures it
    args = ap.parse_args()
    modes = ["language_only", *[k for k in args.modes if k != "language_only"]]
    if args.one:
        print(json.dumps(measure(args.one, modes, args.batch, args.repeats, args.balance_every)))
        return

    from rich.console import Console
    from rich.table import Table
    from tqdm.auto import tqdm

    # a fixed mmap threshold makes glibc hand large freed blocks back at once, so the resident set follows the
    # memory in use (with the default, dynamic threshold it keeps an earlier, larger step's pages)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT),
           "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "262144")}
    rows = []
    for model in tqdm(args.models, desc="models", unit="model"):
        proc = subprocess.run([sys.executable, __file__, "--one", model, "--modes", *modes, "--batch", str(args.batch),
                               "--repeats", str(args.repeats), "--balance-every", str(args.balance_every)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{model} failed:\n{proc.stderr[-3000:]}")
        rows += json.loads(proc.stdout.strip().splitlines()[-1])
    steps = [r for r in rows if r["mode"] != "breakdown"]
    console = Console(width=150)
    table = Table(title=f"one training step (forwards, backwards, clipping, AdamW), batch {args.batch}, modes "
                        f"interleaved in 1 process per model, median of {args.repeats}, process CPU time, "
                        f"{env['OMP_NUM_THREADS']} thread(s), CPU fp32")
    for col in ("model", "image tokens", "mode", "s / step", "x language-only", "step peak growth MiB"):
        table.add_column(col, justify="right")
    for r in steps:
        base = next(b for b in steps if b["model"] == r["model"] and b["mode"] == "language_only")
        r["x_language_only"] = r["seconds"] / base["seconds"]
        mode = r["mode"] + (f" (1-backward {r['one_backward_seconds']:.2f} s, measuring {r['measuring_seconds']:.2f} s"
                            f" every {r['balance_every']})" if "measuring_seconds" in r else "")
        table.add_row(r["model"], str(r["image_tokens"]), mode, f"{r['seconds']:.2f}",
                      f"{r['x_language_only']:.2f}", f"{r['step_peak_growth_mib']:.0f}")
    console.print(table)
    parts = next((r for r in rows if r["mode"] == "breakdown"), None)
    if parts:
        btable = Table(title="embedded model: the shared-prefix step's terms by part (forward + backward)")
        for col in ("part", "s", "share"):
            btable.add_column(col, justify="right")
        for part in ("vision", "text_embedding", "language_model", "contrastive"):
            btable.add_row(part, f"{parts[part + '_seconds']:.3f}", f"{parts[part + '_share']:.0%}")
        btable.add_row("all terms", f"{parts['terms_seconds']:.3f}", "100%")
        console.print(btable)

    flops = [forward_flops(name, crops) for name in REAL for crops in (1, 10)]
    ftable = Table(title="analytic forward GFLOP per sample (real configurations, LM head at labels only)")
    for col in ("model", "crops", "image tokens", "language-only", "three-pass", "shared-prefix", "3-pass x", "shared x"):
        ftable.add_column(col, justify="right")
    for f in flops:
        ftable.add_row(f["model"], str(f["crops"]), str(f["image_tokens"]), f"{f['language_only_gflop']:.0f}",
                       f"{f['three_pass_gflop']:.0f}", f"{f['shared_prefix_gflop']:.0f}", f"{f['three_pass_x']:.3f}",
                       f"{f['shared_prefix_x']:.3f}")
    console.print(ftable)
    write_result(args.out, {"batch": args.batch, "threads": env["OMP_NUM_THREADS"], "steps": steps,
                            "breakdown": parts, "forward_flops": flops})


if __name__ == "__main__":
    main()
