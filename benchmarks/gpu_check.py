"""GPU check of the fast step, for a CUDA machine: one script, offline, about 5 minutes, one JSON out.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--budget-s 270]

Sections (each records its own error and goes on; a section that would start after ``--budget-s`` is skipped
and says so):

1. ``exactness``: the shared-prefix step with FlexAttention (a ``BlockMask``; the route the step takes on CUDA)
   against the three-pass step with SDPA: every loss and every parameter gradient, fp32 (TF32 off) and bf16
   autocast, on tiny LLaVA-OneVision and Qwen2-VL models; FlexAttention's backward has never run on CPU.
2. ``steps``: one training step (forwards, backwards, clipping, fused AdamW; bf16 autocast as in training) at
   LLaVA-OneVision-0.5B layer shapes at full depth (24 LM layers, 26 vision layers, 2 crops at 378 px):
   language-only and three-pass on SDPA, the shared-prefix step on FlexAttention with per-loss clipping, one
   global clip and ``clip_mode: balanced`` (its measuring step every 10 steps included); seconds and peak
   memory growth per step, ratio to language-only (``benchmarks/shared_prefix.py``'s measurement).
3. ``embedding_throughput``: the evaluation's batched embedding (``encode_images`` / ``encode_texts``) against the
   same code at batch size 1, same model and inputs (0.5B shapes).
4. ``auto_processor``: a tiny checkpoint saved by the adapter, loaded with ``AutoProcessor`` and called with an
   image: which class came back and whether it produced pixel values (a project-specific ``processor_class``
   makes transformers return just the tokenizer, which ignores images).

Needs torch, transformers and torchvision (the GPU image has torch 2.11, transformers 5.17), this repository,
and pydantic, which such an image lacks: carry it as wheels (docs/fast-step.md). Without CUDA it says so,
writes ``{"cuda": false, ...}`` and exits 0 without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder would come first on sys.path and benchmarks/peft.py would shadow peft
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

# largest gradient error relative to the tensor's norm (chosen, not derived: fp32 sums in another order give
# ~1e-6 on CPU; bf16 keeps 8 bits of mantissa, and the packed and separate passes round differently)
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-1}
FULL_DEPTH = {"text_layers": 24, "vision_layers": 26}  # LLaVA-OneVision-0.5B (Qwen2-0.5B, SigLIP so400m)


def _tiny_params(family: str):
    from cafe.config import Params, TinyModelConfig

    p = Params()
    p.model.family = family
    p.model.tiny = TinyModelConfig(vision_hidden=64, vision_layers=1, vision_heads=2, text_hidden=64, text_layers=2,
                                   text_heads=2, text_kv_heads=1, text_intermediate=128, patch_size=32)
    return p


def _batch(p, n: int) -> dict:
    from benchmarks.shared_prefix import batch_of

    return batch_of(p, None, n)


def exactness(device: str) -> list[dict]:
    """Shared-prefix (FlexAttention on CUDA) vs three-pass (SDPA): losses and gradients, fp32 and bf16."""
    import contextlib

    import torch

    from cafe.data import shapes
    from cafe.models import build_tiny
    from cafe.training.step import loss_terms

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = []
    for family in ("llava_onevision", "qwen2_vl"):
        for dtype in ("float32", "bfloat16"):
            p = _tiny_params(family)
            adapter = build_tiny(shapes.vocabulary_corpus(), p.synth.image_size, p.model.tiny, p.prompts, p.model,
                                 seed=0)
            adapter.model.to(device)
            data = _batch(p, 4)
            cast = (torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16"
                    else contextlib.nullcontext())

            def run(step: str):
                p.train.step = step
                adapter.model.zero_grad(set_to_none=True)
                with cast:
                    losses = {k: float(t()) for k, t in loss_terms(adapter, data, p.train).items()}
                grads = {n: q.grad.detach().float().clone() for n, q in adapter.model.named_parameters()
                         if q.grad is not None}
                return losses, grads

            try:
                ref_losses, ref_grads = run("three_pass")
                losses, grads = run("shared_prefix")  # switches the model to flex_attention on CUDA
            except Exception as err:  # one family's failure (e.g. another transformers API) keeps the others
                rows.append({"family": family, "dtype": dtype, "ok": False, "error": f"{type(err).__name__}: {err}",
                             "traceback": traceback.format_exc()[-2000:]})
                continue
            # per tensor, relative to its norm with a floor of 1e-3 of the whole gradient's norm: some gradients
            # are zero in exact arithmetic (attention key biases), their rounding noise is no error
            whole = float(torch.sqrt(sum((g ** 2).sum() for g in ref_grads.values())))
            errors = {n: float((g - ref_grads[n]).norm()) / max(float(ref_grads[n].norm()), 1e-3 * whole)
                      for n, g in grads.items() if n in ref_grads}
            worst = max(errors, key=errors.get)
            overall = float(torch.sqrt(sum(((g - ref_grads[n]) ** 2).sum() for n, g in grads.items()
                                           if n in ref_grads))) / whole
            row = {"family": family, "dtype": dtype, "attention": adapter.model.config._attn_implementation,
                   "losses_three_pass": ref_losses, "losses_shared_prefix": losses,
                   "loss_rel_error": {k: abs(losses[k] - ref_losses[k]) / max(abs(ref_losses[k]), 1e-9)
                                      for k in losses},
                   "same_parameters_with_gradient": grads.keys() == ref_grads.keys(),
                   "max_grad_rel_error": errors[worst], "worst_parameter": worst,
                   "whole_grad_rel_error": overall, "tolerance": TOLERANCE[dtype]}
            row["ok"] = (row["same_parameters_with_gradient"] and row["max_grad_rel_error"] <= TOLERANCE[dtype]
                         and max(row["loss_rel_error"].values()) <= TOLERANCE[dtype])
            rows.append(row)
    return rows


def steps(model: str, device: str, batch: int, repeats: int, depth: dict) -> dict:
    from benchmarks.shared_prefix import MODES, batch_of, build, time_modes

    adapter, p = build(model, device, **depth)
    data = batch_of(p, adapter, batch)
    rows = time_modes(adapter, p, data, list(MODES), repeats, balance_every=10)
    base = next(r for r in rows if r["mode"] == "language_only")["seconds"]
    for r in rows:
        r["x_language_only"] = r["seconds"] / base
    image_tokens = int((adapter.lm_inputs(data["images"][:1], data["prompts"][:1], data["captions"][:1])["input_ids"]
                        == adapter.processor.image_token_id).sum())
    return {"model": model, **depth, "batch": batch, "image_tokens": image_tokens,
            "precision": p.train.precision if device == "cuda" else "float32", "rows": rows}


def embedding_throughput(model: str, device: str, depth: dict, n: int) -> dict:
    import torch

    from benchmarks.shared_prefix import batch_of, build

    adapter, p = build(model, device, **depth)
    adapter.model.eval()
    data = batch_of(p, adapter, n)
    images, texts = data["images"], data["captions"] * 2

    def rate(fn, items, batch_size: int) -> float:
        fn(items[:2], batch_size)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(items, batch_size)
        if device == "cuda":
            torch.cuda.synchronize()
        return len(items) / (time.perf_counter() - start)

    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        out = {"images_per_s": rate(adapter.encode_images, images, 64),
               "images_per_s_batch1": rate(adapter.encode_images, images, 1),
               "texts_per_s": rate(adapter.encode_texts, texts, 128),
               "texts_per_s_batch1": rate(adapter.encode_texts, texts, 1)}
    out["images_speedup"] = out["images_per_s"] / out["images_per_s_batch1"]
    out["texts_speedup"] = out["texts_per_s"] / out["texts_per_s_batch1"]
    return {"model": model, **depth, "images": len(images), "texts": len(texts), **out}


def auto_processor() -> dict:
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cafe.data import shapes
    from cafe.models import build_tiny

    p = _tiny_params("llava_onevision")
    adapter = build_tiny(shapes.vocabulary_corpus(), p.synth.image_size, p.model.tiny, p.prompts, p.model, seed=0)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter.save_pretrained(tmp)
        config = Path(tmp) / "processor_config.json"
        if config.is_file():
            out["saved_processor_class"] = json.loads(config.read_text()).get("processor_class")
        try:
            processor = AutoProcessor.from_pretrained(tmp)
        except ImportError as err:  # the loud failure a missing dependency (torchvision) must give: recorded
            out["load_error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            out["ok"] = False
            return out
        out["loaded_class"] = type(processor).__name__
        image = Image.new("RGB", (p.synth.image_size, p.synth.image_size), (200, 30, 30))
        text = adapter._template(adapter._messages([{"type": "image"}, {"type": "text", "text": "Describe."}]), True)
        try:
            encoded = processor(text=[text], images=[image], return_tensors="pt")
            out["pixel_values"] = list(encoded["pixel_values"].shape) if "pixel_values" in encoded else None
            out["image_tokens"] = int((encoded["input_ids"] == adapter.processor.image_token_id).sum())
        except Exception as err:  # recorded, not fatal: this is what the check is for
            out["call_error"] = f"{type(err).__name__}: {err}"
        try:
            model = AutoModelForImageTextToText.from_pretrained(tmp)
            out["auto_model_class"] = type(model).__name__
        except Exception as err:
            out["auto_model_error"] = f"{type(err).__name__}: {err}"
    out["ok"] = bool(out.get("pixel_values")) and out.get("image_tokens", 0) > 0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs/results/gpu_check.json"))
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip the sections that would start after this")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every section on CPU at tiny sizes to check the script (numbers labelled as such)")
    args = ap.parse_args()
    import torch

    result: dict = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
                    "cuda": torch.cuda.is_available()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not result["cuda"] and not args.cpu_dry_run:
        result["message"] = "no CUDA device: nothing was measured (run this on a GPU machine)"
        print(result["message"])
        out.write_text(json.dumps(result, indent=1))
        return 0
    import transformers

    device = "cuda" if result["cuda"] and not args.cpu_dry_run else "cpu"
    result.update(transformers=transformers.__version__, device=device, dry_run=args.cpu_dry_run,
                  device_name=torch.cuda.get_device_name(0) if device == "cuda" else "cpu")
    try:
        import subprocess
        result["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True).stdout.strip() or None
    except OSError:
        result["commit"] = None
    # the dry run checks the code on the embedded model's sizes; the numbers are the GPU's only on CUDA
    model, depth = ("ov-0.5b-shapes", FULL_DEPTH) if device == "cuda" else ("embedded", {})
    batch, repeats, n = (args.batch, args.repeats, 64) if device == "cuda" else (2, 1, 4)
    sections = {
        "exactness": lambda: exactness(device),
        "steps": lambda: steps(model, device, batch, repeats, depth),
        "embedding_throughput": lambda: embedding_throughput(model, device, depth, n),
        "auto_processor": auto_processor,
    }
    start = time.perf_counter()
    for name, run in sections.items():
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            result[name] = {"skipped": f"time budget: {elapsed:.0f} s > {args.budget_s:.0f} s"}
            continue
        begun = time.perf_counter()
        try:
            result[name] = run()
        except Exception as err:
            result[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        seconds = time.perf_counter() - begun
        result.setdefault("seconds", {})[name] = seconds
        print(f"{name}: {seconds:.0f} s", "error" if "error" in (result[name] if isinstance(result[name], dict)
                                                                     else {}) else "", flush=True)
        out.write_text(json.dumps(result, indent=1))  # what is done so far survives a kill
    result["total_seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("device", "device_name", "total_seconds")}))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
