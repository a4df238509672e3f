"""Drift scenario in the shapes world: how often the monitor says ok / warn / retrain for three kinds of
traffic, over many seeds, and whether retraining on the harmful window brings feedback R@K back.

    python benchmarks/drift.py [--seeds 20] [--steps 200] [--out docs/results/drift.json]

A tiny model of the real architecture (hidden 32, conftest's size) is trained contrastive-only on the
in-distribution world for ``--steps`` steps, its monitor reference is built on an in-distribution validation
set of the same size as a traffic window, then each (kind, seed) window of ``--gallery`` images is replayed as
served traffic with feedback (cafe.monitoring.scenario.replay) and judged by `cafe monitor`'s library function
with params.yaml's thresholds. Finally the model is fine-tuned on the feedback pairs of a few harmful windows
(plus the original training pairs) and feedback R@K is measured on fresh harmful windows before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not benchmarks/ (its peft.py shadows peft)

import torch  # noqa: E402

from benchmarks._results import default_out, write_result  # noqa: E402
from cafe.config import TinyModelConfig, load_params  # noqa: E402
from cafe.data import shapes  # noqa: E402
from cafe.data.drift import KINDS, training_pairs, write_world  # noqa: E402
from cafe.data.pair_folder import write_pair_folder  # noqa: E402
from cafe.models import build_tiny, load_adapter  # noqa: E402
from cafe.monitoring.monitor import monitor  # noqa: E402
from cafe.monitoring.reference import build_reference, probe_metrics  # noqa: E402
from cafe.monitoring.scenario import replay_world, train_contrastive as train  # noqa: E402
from cafe.monitoring.window_data import window_pairs  # noqa: E402

SMALL = TinyModelConfig(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=2,
                        text_heads=2, text_kv_heads=1, text_intermediate=64)


window = replay_world  # (adapter, work, kind, seed, gallery, version) -> the window's TrafficLog


def feedback_recall(adapter, work, kind, seeds, gallery, version, k) -> float:
    hits = n = 0
    for seed in seeds:
        w = window(adapter, work, kind, seed, gallery, version).read_window()
        from cafe.serving.traffic import chosen_rank

        ranks = [chosen_rank(r) for r in w.labelled]
        hits += sum(r <= k for r in ranks)
        n += len(ranks)
    return hits / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--retrain-steps", type=int, default=120)
    ap.add_argument("--gallery", type=int, default=100)
    ap.add_argument("--train-images", type=int, default=600)
    ap.add_argument("--work", default="")
    ap.add_argument("--out", default=default_out("drift"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="cafe-drift-"))
    p = load_params("params.yaml")
    p.model.tiny = SMALL.model_copy()
    cfg = p.monitor
    cfg.report = False

    train_set = write_world(work / "train", "in_distribution", args.train_images, seed=10_000)
    pairs = training_pairs(train_set)
    write_pair_folder(pairs, work / "train_pairs", p.prompts.caption)
    model_dir = train(p, work / "train_pairs", work / "run", args.steps,
                      lambda: build_tiny(shapes.vocabulary_corpus(), 64, p.model.tiny, p.prompts, p.model, seed=0))
    adapter = load_adapter(model_dir, p.prompts, p.model, fresh_tuning=False)
    adapter.model.eval()

    # reference: probe set + a validation set the size of a window, both in-distribution
    cfg.probe = str(write_world(work / "reference", "in_distribution", 50 + args.gallery, seed=20_000))
    cfg.probe_images, cfg.reference_images = 50, args.gallery
    ref_meta, ref_arrays = build_reference(adapter, cfg, top_k=10)
    probe = probe_metrics(adapter, cfg, 10)
    print("reference", json.dumps({k: ref_meta[k] for k in ("validation", "probe", "modality_gap")}))

    rows, decisions, examples = [], {k: Counter() for k in KINDS}, {}
    for kind in KINDS:
        for seed in range(args.seeds):
            log = window(adapter, work, kind, seed, args.gallery, "v1")
            summary = monitor(log.read_window(), ref_meta, ref_arrays, cfg, work / "monitor" / f"{kind}-{seed}",
                              probe=probe, model_version="v1")
            decisions[kind][summary["decision"]] += 1
            sig = summary["signals"]
            rows.append({"kind": kind, "seed": seed, "decision": summary["decision"],
                         "feedback_recall": sig["feedback"]["recall"], "feedback_mrr": sig["feedback"]["mrr"],
                         "text_drift": sig["embedding_drift"]["text"].get("score"),
                         "image_drift": sig["embedding_drift"]["image"].get("score"),
                         "top1_p": sig["top1_drift"].get("p_value"), "gap": sig["modality_gap"]["value"]})
            examples.setdefault(kind, summary["reasons"])
            print(kind, seed, summary["decision"], f"R@{cfg.recall_k}={sig['feedback']['recall']:.3f}", summary["reasons"])

    # retraining on the harmful traffic window's feedback pairs (+ the original training pairs): one folder
    retrain_seeds, eval_seeds = range(100, 105), range(200, 203)
    window_lines = []
    for seed in retrain_seeds:
        data = work / "worlds" / f"harmful-{seed}"
        log = window(adapter, work, "harmful", seed, args.gallery, "v1")
        from cafe.serving.index import gallery_items

        got, _ = window_pairs(log.read_window(), dict(gallery_items(data / "retrieval_karpathy.json")))
        window_lines += got
    mixed = work / "retrain_pairs"
    write_pair_folder(pairs + window_lines, mixed, p.prompts.caption)
    before = {kind: feedback_recall(adapter, work, kind, eval_seeds, args.gallery, "v1-eval", cfg.recall_k)
              for kind in ("in_distribution", "harmful")}
    retrained = train(p, mixed, work / "retrain", args.retrain_steps, str(model_dir))
    adapter2 = load_adapter(retrained, p.prompts, p.model, fresh_tuning=False)
    adapter2.model.eval()
    after = {kind: feedback_recall(adapter2, work, kind, eval_seeds, args.gallery, "v2-eval", cfg.recall_k)
             for kind in ("in_distribution", "harmful")}

    rates = {kind: {d: decisions[kind][d] / args.seeds for d in ("ok", "warn", "retrain")} for kind in KINDS}
    result = {"seeds": args.seeds, "gallery": args.gallery, "steps": args.steps, "retrain_steps": args.retrain_steps,
              "model": SMALL.model_dump(), "thresholds": cfg.model_dump(mode="json"),
              "reference": {k: ref_meta[k] for k in ("validation", "probe", "modality_gap")},
              "decision_rates": rates, "example_reasons": examples, "windows": rows,
              "retraining": {"window_pairs": len(window_lines), "train_pairs": len(pairs),
                             f"feedback_R@{cfg.recall_k}_before": before, f"feedback_R@{cfg.recall_k}_after": after},
              "seconds": round(time.perf_counter() - start, 1)}
    write_result(args.out, result)
    print(f"\n| traffic | ok | warn | retrain |   (over {args.seeds} seeds, window {args.gallery} searches)")
    print("|---|---:|---:|---:|")
    for kind in KINDS:
        r = rates[kind]
        print(f"| {kind} | {r['ok']:.2f} | {r['warn']:.2f} | {r['retrain']:.2f} |")
    print(f"\nfeedback R@{cfg.recall_k} before -> after retraining: "
          + ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in before))
    print(f"{result['seconds']} s; -> {args.out}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
