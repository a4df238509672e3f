"""Quick probes of the skills a language model keeps: yes/no, multiple choice, and whether its replies are
answers at all. Used to tune pretraining and the L_lm data source (docs/understanding.md) and by the tests
that guard them; the evaluation suite (``cafe evaluate``) stays the measurement of record.

- ``yes_probability``: P("Yes") / (P("Yes") + P("No")) at the first answer position, one forward per batch;
  its ROC AUC against the labels says whether the model tells present from absent objects, also when its
  greedy replies are all "Yes" (a base that never learnt yes/no gives 0.5).
- ``invalid_rates``: the share of replies that answer nothing: a POPE reply without yes/no/not in its first
  sentence, an MMStar reply that names no single option (VLMEvalKit's matching, ``cafe.evaluation.mmstar``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cafe.evaluation import mmstar, pope
from cafe.models.adapter import VLMAdapter


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC (Mann-Whitney, ties count half); 0.5 when one class is missing."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _word_id(adapter: VLMAdapter, word: str) -> int:
    ids = adapter.tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{word!r} is {len(ids)} tokens for this tokenizer; the yes/no probe needs one")
    return ids[0]


@torch.no_grad()
def yes_probability(adapter: VLMAdapter, images: Sequence[Image.Image], questions: Sequence[str],
                    batch_size: int = 64) -> np.ndarray:
    """P("Yes") / (P("Yes") + P("No")) at the first answer position of each question."""
    yes, no = _word_id(adapter, "Yes"), _word_id(adapter, "No")
    adapter.model.eval()
    out = []
    for lo in range(0, len(images), batch_size):
        inputs = adapter.generation_inputs(images[lo:lo + batch_size], questions[lo:lo + batch_size])
        last = adapter.hidden_states(inputs)[:, -1]  # left padding: the last position is the answer's first
        logits = adapter.model.lm_head(last).float()[:, [yes, no]]
        out.append(torch.softmax(logits, dim=-1)[:, 0].cpu())
    return torch.cat(out).numpy()


def invalid_pope(reply: str) -> bool:
    """A POPE reply that says neither yes nor no in its first sentence (POPE would count it as "yes")."""
    words = set(reply.split(".")[0].replace(",", " ").lower().split())
    return not words & {"yes", "no", "not"}


def invalid_choice(reply: str, question: str) -> bool:
    """An MMStar reply that names no single option of its question."""
    return mmstar.parse_choice(reply, mmstar.options(question)) is None


def invalid_rates(pope_replies: Sequence[str], choice_replies: Sequence[str],
                  choice_questions: Sequence[str]) -> dict[str, float]:
    """The share of invalid replies per task (``nan`` for a task without replies)."""
    def share(flags: list[bool]) -> float:
        return float(np.mean(flags)) if flags else float("nan")

    return {"pope_invalid": share([invalid_pope(r) for r in pope_replies]),
            "mmstar_invalid": share([invalid_choice(r, q) for r, q in zip(choice_replies, choice_questions)])}


def format_regressions(base: dict[str, float], tuned: dict[str, float], max_increase: float = 0.02) -> list[str]:
    """The invalid-answer rates (``*_invalid``, or the suite's ``*_invalid_rate``) that rose by more than
    ``max_increase`` from the base to the fine-tuned model, each as a sentence; empty when formats were kept."""
    return [f"{k}: {base[k]:.3f} -> {tuned[k]:.3f} (allowed +{max_increase})" for k in sorted(base)
            if k.endswith(("_invalid", "_invalid_rate")) and k in tuned and tuned[k] > base[k] + max_increase]


def _images(root: Path, names: Sequence[str]) -> list[Image.Image]:
    out = []
    for name in names:
        with Image.open(root / name) as img:
            out.append(img.convert("RGB"))
    return out


def probe(adapter: VLMAdapter, eval_dir: str | Path, max_items: int = 0, batch_size: int = 64,
          generate: bool = True) -> dict[str, float]:
    """Yes/no AUC, POPE accuracy and F1, MMStar-format accuracy (all and per category) and invalid rates on
    an evaluation world (``cafe synth``'s eval folder); ``max_items`` > 0 keeps the first N of each task."""
    root = Path(eval_dir)
    questions = pope.load_pope(root)
    choices = mmstar.load_mmstar(root / "mmstar.jsonl")
    if max_items:
        questions, choices = questions[:max_items], choices[:max_items]
    images = _images(root / "images", [q.image for q in questions])
    labels = np.array([q.label == "yes" for q in questions])
    p_yes = yes_probability(adapter, images, [q.text for q in questions], batch_size)
    result = {"yesno_auc": roc_auc(p_yes, labels), "p_yes_mean": float(p_yes.mean()),
              "p_yes_std": float(p_yes.std())}
    if not generate:
        return result
    gen = lambda ims, texts: [a for lo in range(0, len(ims), batch_size)  # noqa: E731
                              for a in adapter.generate(ims[lo:lo + batch_size], texts[lo:lo + batch_size], 4)]
    pope_replies = gen(images, [q.text for q in questions])
    pred = np.array([pope.parse_answer(r) == "yes" for r in pope_replies])
    tp, fp, fn = (pred & labels).sum(), (pred & ~labels).sum(), (~pred & labels).sum()
    choice_replies = gen(_images(root / "images", [c.image for c in choices]), [c.question for c in choices])
    correct = np.array([mmstar.parse_choice(r, mmstar.options(c.question)) == c.answer
                        for r, c in zip(choice_replies, choices)])
    result.update({"pope_accuracy": float((pred == labels).mean()),
                   "pope_f1": float(2 * tp / max(1, 2 * tp + fp + fn)),
                   "pope_yes_ratio": float(pred.mean()),
                   "mmstar_accuracy": float(correct.mean())})
    for category in sorted({c.category for c in choices}):
        mask = np.array([c.category == category for c in choices])
        result[f"mmstar_{category}"] = float(correct[mask].mean())
    result.update(invalid_rates(pope_replies, choice_replies, [c.question for c in choices]))
    return result


def main() -> None:
    """``python -m cafe.training.probes MODEL EVAL_DIR [OUT.json]``: print (and write) the probe."""
    import sys

    from cafe.config import Params
    from cafe.models import load_adapter

    torch.set_num_threads(1)
    params = Params()
    adapter = load_adapter(sys.argv[1], params.prompts, params.model)
    result = probe(adapter, sys.argv[2])
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
