"""The evaluation suite end to end on the small shapes world: files, cache, report, prompt ranking."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cafe.evaluation.cache import EmbeddingCache, model_fingerprint
from cafe.evaluation.evaluate import METRIC_KEYS, REPLY_FIELDS, evaluate
from cafe.evaluation.per_item import PerItem
from tests.eval_runs import evaluation_folder, mmstar_replies


def test_cache_computes_once_and_is_keyed_by_model(tmp_path, adapter):
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(3, 2)

    cache = EmbeddingCache(tmp_path, "model-a")
    a = cache.get_or_compute("texts", "k1", compute)
    b = EmbeddingCache(tmp_path, "model-a").get_or_compute("texts", "k1", compute)
    assert torch.equal(a, b) and len(calls) == 1
    EmbeddingCache(tmp_path, "model-b").get_or_compute("texts", "k1", compute)
    EmbeddingCache(None, "model-a").get_or_compute("texts", "k1", compute)  # caching off
    assert len(calls) == 3

    before = model_fingerprint(adapter.model)
    with torch.no_grad():
        next(adapter.model.parameters()).add_(1e-3)
    assert model_fingerprint(adapter.model) != before
    assert model_fingerprint(adapter.model, settings={"prompt": "x"}) != model_fingerprint(adapter.model)


def test_checkpoint_fingerprint_follows_the_weight_files(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"0" * 10)
    first = model_fingerprint(path=ckpt)
    assert model_fingerprint(path=ckpt) == first
    (ckpt / "model.safetensors").write_bytes(b"1" * 11)
    assert model_fingerprint(path=ckpt) != first


@pytest.fixture()
def small_eval(params, tmp_path):
    cfg = params.evaluate.model_copy(update={
        "cache_dir": str(tmp_path / "cache"), "max_new_tokens": 4, "detail_max_new_tokens": 4, "batch_size": 16,
        "max_items": {"retrieval": 12, "captions": 4, "pope": 2, "throne": 3, "sugarcrepe": 2, "mmstar": 3}})
    return cfg


@pytest.mark.slow
def test_every_part_writes_its_metrics(adapter, params, small_eval, tmp_path):
    metrics = evaluate(adapter, small_eval, params.prompts, tmp_path / "all")
    for key in METRIC_KEYS + ("pope_avg_f1", "throne_f0.5", "throne_cls_f1", "sugarcrepe_accuracy",
                              "mmstar_accuracy", "image_effective_rank", "text_cev@10"):
        assert key in metrics, key
    assert list(metrics)[:len(METRIC_KEYS)] == list(METRIC_KEYS)
    details = json.loads((tmp_path / "all" / "details.json").read_text())
    assert details["counts"]["pope"] == 6 and details["counts"]["mmstar"] == 3
    lines = (tmp_path / "all" / "descriptions.jsonl").read_text().splitlines()
    report = (tmp_path / "all" / "report.md").read_text()
    assert len(lines) == 3 and "THRONE class-wise" in report and "Replies that are no answer" in report
    for key in ("pope_invalid_rate", "mmstar_invalid_rate", "caption_empty_rate", "throne_empty_rate",
                "t2i_R@1_seen_text", "t2i_R@1_unseen_text"):
        assert 0.0 <= metrics[key] <= 1.0 or np.isnan(metrics[key]), key
    # every reply of every generative part, with what its parser read
    replies = [json.loads(line) for line in (tmp_path / "all" / "replies.jsonl").read_text().splitlines()]
    assert [sum(r["part"] == p for r in replies) for p in ("captions", "pope", "throne", "mmstar")] == [4, 6, 3, 3]
    assert all(list(r) == list(REPLY_FIELDS) for r in replies)
    pope_rows = [r for r in replies if r["part"] == "pope"]
    assert {r["parsed"] for r in pope_rows} <= {"yes", "no", "other"}
    assert metrics["pope_invalid_rate"] == pytest.approx(sum(r["parsed"] == "other" for r in pope_rows) / 6)
    mm = [r for r in replies if r["part"] == "mmstar"]
    assert metrics["mmstar_accuracy"] == pytest.approx(sum(r["correct"] for r in mm) / 3)
    assert metrics["mmstar_invalid_rate"] == pytest.approx(sum(r["parsed"] is None for r in mm) / 3)
    # the report's example replies, each beside a thumbnail of its image (found through details' reply_images)
    assert set(details["reply_images"]) == {"captions", "pope", "throne", "mmstar"}
    shown = sum(min(sum(r["correct"] == c for r in replies if r["part"] == p), 2)
                for p in details["reply_images"] for c in (True, False))
    section = (tmp_path / "all" / "report.html").read_text().split("<section id='replies'>")[1].split("</section>")[0]
    assert section.count("<img class='thumb'") == shown and "thumb missing" not in section


def test_evaluate_writes_metrics_per_item_report_and_reuses_embeddings(adapter, params, small_eval, tmp_path):
    # the parts without generation (fast); test_every_part_writes_its_metrics runs them all
    small_eval = small_eval.model_copy(update={"parts": ["retrieval", "geometry", "sugarcrepe"]})
    first = evaluate(adapter, small_eval, params.prompts, tmp_path / "base")
    assert {"i2t_R@1", "t2i_R@10", "modality_gap", "sugarcrepe_accuracy", "image_effective_rank"} <= set(first)
    saved = json.loads((tmp_path / "base" / "metrics.json").read_text())
    recomputed = PerItem.load(tmp_path / "base" / "per_item.npz").metrics()
    assert saved.keys() == recomputed.keys()
    assert all(np.isclose(saved[k], recomputed[k], equal_nan=True) for k in saved)
    details = json.loads((tmp_path / "base" / "details.json").read_text())
    assert details["counts"]["retrieval"]["images"] == 12 and details["counts"]["sugarcrepe"] == 8
    assert details["embedding_cache"]["misses"] >= 2
    examples = details["retrieval_examples"]  # the report's example retrievals: caption -> its 5 nearest images
    assert len(examples) == 6 and all(len(e["top"]) == 5 and Path(e["answer"]).is_file() for e in examples)
    for e in examples:
        in_top = [t["image"] for t in e["top"]].index(e["answer"]) if e["answer"] in [t["image"] for t in e["top"]] else None
        assert (e["rank"] < 5) == (in_top is not None) and (in_top is None or in_top == e["rank"])
        assert [t["score"] for t in e["top"]] == sorted((t["score"] for t in e["top"]), reverse=True)

    second = evaluate(adapter, small_eval, params.prompts, tmp_path / "cafe", compare={"base": tmp_path / "base"})
    details = json.loads((tmp_path / "cafe" / "details.json").read_text())
    assert details["embedding_cache"]["misses"] == 0 and details["embedding_cache"]["hits"] >= 2
    assert all(np.isclose(first[k], second[k], equal_nan=True) for k in first)

    page = (tmp_path / "cafe" / "report.html").read_text()
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page
    assert "<th>base</th>" in page
    assert page.count("<img class='thumb'") >= 6 * 5  # the example retrievals' thumbnails, embedded
    assert "| i2t_R@1 |" in (tmp_path / "cafe" / "report.md").read_text()
    assert (tmp_path / "cafe" / "plots" / "embedding_scatter.png").read_bytes()[:4] == b"\x89PNG"


def test_prompt_ranking_scores_every_candidate(adapter, params):
    from cafe.evaluation.prompts import rank_prompts

    candidates = [("Compress this image in one word:", "Compress this sentence in one word:"),
                  ("Describe the image briefly.", "Describe the image briefly.")]
    rows = rank_prompts(adapter, candidates, f"{params.evaluate.data}/retrieval_karpathy.json", images=4)
    assert {(r["image_prompt"], r["text_prompt"]) for r in rows} == set(candidates)
    assert [r["retrieval_rank"] for r in rows] == [1, 2] and rows[0]["R@1"] >= rows[1]["R@1"]
    vocab = len(adapter.tokenizer)
    for r in rows:
        assert 0 < r["entropy_image"] <= np.log(vocab) + 1e-4 and 0 < r["entropy_text"] <= np.log(vocab) + 1e-4
    assert sorted(r["entropy_rank"] for r in rows) == [1, 2]


def test_report_shows_the_invalid_answer_rates_and_which_metrics_are_lower_is_better(tmp_path):
    from cafe.evaluation.report import write_report

    runs = {}
    for name, invalid in (("base", 0.0), ("cafe", 1.0)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"mmstar_accuracy": 0.25, "mmstar_invalid_rate": invalid,
                                                         "pope_invalid_rate": invalid / 2, "i2t_R@1": 0.5}))
        runs[name] = folder
    md, _ = write_report(runs, tmp_path / "cafe")
    text = md.read_text()
    section = text.split("## Replies that are no answer")[1].split("## Metrics")[0]
    assert "| MMStar-format | mmstar_invalid_rate |" in section and "| 0.000 | 1.000 |" in section
    assert "| POPE | pope_invalid_rate |" in section and "caption_empty_rate" not in section
    assert "Lower is better for mmstar_invalid_rate, pope_invalid_rate;" in text


def test_report_opens_with_a_headline_of_intervals_and_gate_verdicts_then_example_replies(tmp_path):
    from cafe.evaluation.report import write_report

    runs = {name: evaluation_folder(tmp_path / name, correct, replies=mmstar_replies("ABA"))
            for name, correct in (("base", [1] * 30 + [0] * 10), ("cafe", [1] * 10 + [0] * 30))}
    md, page = write_report(runs, tmp_path / "cafe")
    text = md.read_text()
    assert text.index("## Headline") < text.index("## Metrics")
    row = next(line for line in text.splitlines() if line.startswith("| understanding | mmstar_accuracy |"))
    lo, hi = map(float, row.split("[")[1].split("]")[0].split(", "))  # bootstrap of the per-item results
    assert lo < 0.25 < hi and "| -0.500 | — |" in row
    examples = text.split("## Example replies")[1].splitlines()
    assert examples[3].startswith("| mmstar | x.png | Q? | B |") and "| wrong |" in examples[3]
    (tmp_path / "cafe" / "gate.json").write_text(json.dumps({"passed": False, "intervals": {}, "checks": [
        {"metric": "mmstar_accuracy", "kind": "regression", "value": 0.25, "ci": None, "threshold": 0.1,
         "passed": False, "message": "x"}]}))
    _, page = write_report(runs, tmp_path / "cafe")
    assert "<tr class='fail'><td>understanding</td><td>mmstar_accuracy</td>" in page.read_text()
