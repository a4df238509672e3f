"""The main job on the embedded default, stage by stage, skipping stages whose outputs are current."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from cafe import stages
from cafe.config import Params
from cafe.report import markdown_table, print_table


def _timed(console: Console, label: str, fn):
    start = time.perf_counter()
    result = fn()
    console.print(f"[green]✓[/green] {label} ({time.perf_counter() - start:.0f}s)")
    return result


def run(params: Params, console: Console) -> bool:
    """Run every stage; returns whether the fine-tuned model met the demo's targets."""
    from cafe.data import shapes
    from cafe.data.repurpose import repurpose
    from cafe.data.pairs import pairs_dataset
    from cafe.distributed import init_distributed
    from cafe.evaluation.evaluate import evaluate
    from cafe.evaluation.report import write_report
    from cafe.models import load_adapter
    from cafe.training.pretrain import pretrain
    from cafe.training.trainer import Trainer

    start = time.perf_counter()
    dist = init_distributed()
    synth_digest = params.digest("synth")
    if stages.is_current(params.synth.out, "synth", synth_digest):
        console.print(f"[dim]· synth: {params.synth.out} is current[/dim]")
    else:
        _timed(console, f"synth -> {params.synth.out}", lambda: shapes.generate(params.synth))
        stages.mark(params.synth.out, "synth", synth_digest)
    pairs_digest = params.digest("synth", "repurpose")
    if stages.is_current(params.repurpose.out, "repurpose", pairs_digest):
        console.print(f"[dim]· repurpose: {params.repurpose.out} is current[/dim]")
    else:
        stats = _timed(console, f"repurpose -> {params.repurpose.out}", lambda: repurpose(params.repurpose))
        console.print(f"[dim]  {stats['identity']}[/dim]")
        stages.mark(params.repurpose.out, "repurpose", pairs_digest)

    base_digest = params.digest("synth", "model", "prompts", "pretrain")
    base_model = Path(params.pretrain.output) / "model"
    if stages.is_current(params.pretrain.output, "pretrain", base_digest) and base_model.is_dir():
        console.print(f"[dim]· pretrain: {base_model} is current[/dim]")
    else:
        console.print("pretraining the base model: vision warm-up, then language-only (once; cached afterwards)")
        _timed(console, f"pretrain -> {base_model}", lambda: pretrain(params, dist))
        stages.mark(params.pretrain.output, "pretrain", base_digest)

    metrics_root = Path("metrics")
    eval_digest = params.digest("evaluate", "prompts") + base_digest
    base_metrics = metrics_root / "base"
    if stages.is_current(base_metrics, "evaluate-base", eval_digest):
        console.print(f"[dim]· evaluate base: {base_metrics} is current[/dim]")
    else:
        adapter = load_adapter(base_model, params.prompts, params.model)
        _timed(console, "evaluate base", lambda: evaluate(adapter, params.evaluate, params.prompts, base_metrics))
        stages.mark(base_metrics, "evaluate-base", eval_digest)

    train_cfg = params.train.model_copy(update={"base_model": str(base_model)})
    samples = pairs_dataset(params.model_copy(update={"train": train_cfg}))
    console.print(f"CAFe fine-tuning on {len(samples)} pairs "
                  f"(alpha_lm={train_cfg.objective.alpha_lm}, alpha_con={train_cfg.objective.alpha_con})")
    model_dir = _timed(console, "train", lambda: Trainer(train_cfg, params, dist).fit(samples, base_model, resume=False))
    adapter = load_adapter(model_dir, params.prompts, params.model)
    cafe_metrics = metrics_root / "cafe"
    _timed(console, "evaluate CAFe", lambda: evaluate(adapter, params.evaluate, params.prompts, cafe_metrics,
                                                      compare={"base": base_metrics}))

    runs = {"base": json.loads((base_metrics / "metrics.json").read_text()),
            "CAFe": json.loads((cafe_metrics / "metrics.json").read_text())}
    print_table(runs, "base model vs CAFe fine-tuned (held-out shapes world)", console)
    Path("reports").mkdir(exist_ok=True)
    Path("reports/demo.md").write_text("# base vs CAFe\n\n" + markdown_table(runs))
    write_report({"base": base_metrics, "CAFe": cafe_metrics}, "reports", "base model vs CAFe fine-tuned")
    base, cafe = runs["base"], runs["CAFe"]
    checks = {
        "retrieval R@1 far above the base (both ways, at least +0.2)":
            cafe["i2t_R@1"] >= base["i2t_R@1"] + 0.2 and cafe["t2i_R@1"] >= base["t2i_R@1"] + 0.2,
        "caption object F1 within 10% of the base": cafe["object_f1"] >= 0.9 * base["object_f1"],
        "R@1 >= 0.5 both ways": cafe["i2t_R@1"] >= 0.5 and cafe["t2i_R@1"] >= 0.5,
        "caption object F1 >= 0.5": cafe["object_f1"] >= 0.5,
    }
    for label, passed in checks.items():
        console.print(f"{'[green]✓' if passed else '[red]✗'}[/] {label}")
    console.print(f"total {time.perf_counter() - start:.0f}s; table in reports/demo.md, report in reports/report.html, "
                  f"metrics in {metrics_root}/")
    return all(checks.values())
