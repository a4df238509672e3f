"""Per-item evaluation results and the metrics computed from them.

Every metric in ``metrics.json`` is a function of one *group* of per-item arrays (one row per image,
caption, question or pair). ``cafe evaluate`` computes the point values with these functions and saves
the arrays as ``per_item.npz`` next to ``metrics.json``; ``cafe gate`` resamples the rows and calls the
same functions, so the bootstrap interval is always the interval of exactly the reported metric.

Groups (arrays; metric keys):

- ``retrieval`` (``i2t_rank`` per image, ``t2i_rank`` per caption, resampled independently):
  ``i2t_R@K``, ``t2i_R@K``.
- ``captions`` (``tp``, ``n_pred``, ``n_true`` per image): ``object_precision|recall|f1`` (micro).
- ``pope`` (``pred`` 1 = yes, ``label``, ``split`` index per question): ``probe_accuracy|f1|yes_ratio``
  over all questions, ``pope_<split>_<m>`` per split and ``pope_avg_<m>`` (mean over splits) for
  m in accuracy, precision, recall, f1, yes_ratio.
- ``throne`` (``tp``, ``fp``, ``fn`` per image x class): ``throne_precision|recall|f1|f0.5`` (overall,
  micro) and ``throne_cls_precision|recall|f1|f0.5`` (class-wise, macro over classes).
- ``sugarcrepe`` (``correct``, ``subset`` index per pair): ``sugarcrepe_<subset>_accuracy``,
  ``sugarcrepe_<category>_accuracy`` (replace, swap, add) and ``sugarcrepe_accuracy`` (mean of categories).
- ``mmstar`` (``correct``, ``category`` index per question): ``mmstar_accuracy``, ``mmstar_<category>_accuracy``.
- ``geometry`` (``image_emb``, ``text_emb`` rows, resampled independently): ``modality_gap``,
  ``image|text_effective_rank``, ``image|text_cev@10`` (cumulative explained variance of 10 components).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

NAN = float("nan")

# metrics where lower is better: the gate turns their regressions around and the reports say so
LOWER_IS_BETTER = frozenset({"modality_gap"})
LOWER_IS_BETTER_SUFFIXES = ("_invalid_rate", "_empty_rate")


def lower_is_better(metric: str) -> bool:
    """Whether a lower value of ``metric`` is better (the modality gap, every invalid/empty-answer rate)."""
    return metric in LOWER_IS_BETTER or metric.endswith(LOWER_IS_BETTER_SUFFIXES)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def f_beta(precision: float, recall: float, beta: float = 1.0) -> float:
    b2 = beta * beta
    den = b2 * precision + recall
    return (1 + b2) * precision * recall / den if den else 0.0


# ---------------------------------------------------------------------------- group metric functions
def retrieval_metrics(a: dict[str, np.ndarray], meta: dict) -> dict[str, float]:
    out = {}
    for k in meta.get("ks", [1, 5, 10]):
        out[f"i2t_R@{k}"] = float(np.mean(a["i2t_rank"] < k)) if len(a["i2t_rank"]) else NAN
        out[f"t2i_R@{k}"] = float(np.mean(a["t2i_rank"] < k)) if len(a["t2i_rank"]) else NAN
    return out


def caption_metrics(a: dict[str, np.ndarray], meta: dict) -> dict[str, float]:
    tp, n_pred, n_true = a["tp"].sum(), a["n_pred"].sum(), a["n_true"].sum()
    p, r = _ratio(tp, n_pred), _ratio(tp, n_true)
    return {"object_precision": p, "object_recall": r, "object_f1": f_beta(p, r)}


def yes_no_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """POPE's numbers with "yes" as the positive class."""
    n = len(label)
    if n == 0:
        return {m: NAN for m in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
    tp = int(np.sum((pred == 1) & (label == 1)))
    fp = int(np.sum((pred == 1) & (label == 0)))
    fn = int(np.sum((pred == 0) & (label == 1)))
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"accuracy": float(np.mean(pred == label)), "precision": p, "recall": r, "f1": f_beta(p, r),
            "yes_ratio": float(np.mean(pred == 1))}


def pope_metrics(a: dict[str, np.ndarray], meta: dict) -> dict[str, float]:
    pooled = yes_no_metrics(a["pred"], a["label"])
    out = {"probe_accuracy": pooled["accuracy"], "probe_f1": pooled["f1"], "probe_yes_ratio": pooled["yes_ratio"]}
    per_split = []
    for i, split in enumerate(meta["splits"]):
        keep = a["split"] == i
        scores = yes_no_metrics(a["pred"][keep], a["label"][keep])
        per_split.append(scores)
        out.update({f"pope_{split}_{m}": v for m, v in scores.items()})
    for m in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        out[f"pope_avg_{m}"] = float(np.mean([s[m] for s in per_split])) if per_split else NAN
    if "valid" in a:  # replies with neither yes nor no (absent in evaluations written before it existed)
        out["pope_invalid_rate"] = _invalid_rate(a["valid"])
        for i, split in enumerate(meta["splits"]):
            out[f"pope_{split}_invalid_rate"] = _invalid_rate(a["valid"][a["split"] == i])
    return out


def _invalid_rate(valid: np.ndarray) -> float:
    return float(1.0 - np.mean(valid)) if len(valid) else NAN


def throne_classwise(a: dict[str, np.ndarray], classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1, F0.5 and support of every class."""
    tp, fp, fn = a["tp"].sum(0), a["fp"].sum(0), a["fn"].sum(0)
    out = {}
    for c, name in enumerate(classes):
        p, r = _ratio(tp[c], tp[c] + fp[c]), _ratio(tp[c], tp[c] + fn[c])
        out[name] = {"precision": p, "recall": r, "f1": f_beta(p, r), "f0.5": f_beta(p, r, 0.5),
                     "support": int(tp[c] + fn[c]), "predicted": int(tp[c] + fp[c])}
    return out


def throne_metrics(a: dict[str, np.ndarray], meta: dict) -> dict[str, float]:
    tp, fp, fn = a["tp"].sum(), a["fp"].sum(), a["fn"].sum()
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    out = {"throne_precision": p, "throne_recall": r, "throne_f1": f_beta(p, r), "throne_f0.5": f_beta(p, r, 0.5)}
    # class-wise: precision over classes that were named, recall over classes that are present
    cls = list(throne_classwise(a, meta["classes"]).values())
    named = [c for c in cls if c["predicted"]]
    present = [c for c in cls if c["support"]]
    either = [c for c in cls if c["predicted"] or c["support"]]
    out["throne_cls_precision"] = float(np.mean([c["precision"] for c in named])) if named else 0.0
    out["throne_cls_recall"] = float(np.mean([c["recall"] for c in present])) if present else 0.0
    out["throne_cls_f1"] = float(np.mean([c["f1"] for c in either])) if either else 0.0
    out["throne_cls_f0.5"] = float(np.mean([c["f0.5"] for c in either])) if either else 0.0
    return out


def sugarcrepe_metrics(a: dict[str, np.ndarray], meta: dict) -> dict[str, float]:
    out = {}
    by_category: dict[str, list[np.ndarray]] = {}
    for i, subset in enumerate(meta["subsets"]):
        correct = a["correct"][a["subset"] == i]
        out[f"sugarcrepe_{subset}_accuracy"] = float(np.mean(correct)) if len(correct) else NAN
        by_category.setdefault(subset.split("_")[0], []).append(correct)
    for category, parts in by_category.items():
        joined = np.concatenate(parts)
        out[f"sugarcrepe_{category}_accuracy"] = float(np.mean(joined)) if len(joined) else NAN
    cats = [out[f"sugarcrepe_{c}_accuracy"] for c in by_category]
    out["sugarcrepe_accuracy"] = float(np.mean(cats)) if cats else NAN
    return out


def mmstar_metrics(a: dict[str, np.ndarray], meta: dict) -> dict[str, float]:
    out = {"mmstar_accuracy": float(np.mean(a["correct"])) if len(a["correct"]) else NAN}
    for i, category in enumerate(meta["categories"]):
        correct = a["correct"][a["category"] == i]
        out[f"mmstar_{category}_accuracy"] = float(np.mean(correct)) if len(correct) else NAN
    return out


def spectrum(x: np.ndarray) -> np.ndarray:
    """Singular values of the centred rows, largest first."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    eig = np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)
    return np.sqrt(eig)


def effective_rank(x: np.ndarray) -> float:
    """Roy & Vetterli (2007): exp of the entropy of the normalised singular values."""
    s = spectrum(x)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(math.exp(-(p * np.log(p)).sum()))


def explained_variance(x: np.ndarray) -> np.ndarray:
    """Cumulative share of variance explained by the first 1, 2, ... principal components."""
    var = spectrum(x) ** 2
    return np.cumsum(var) / var.sum() if var.sum() > 0 else np.zeros_like(var)


def geometry_metrics(a: dict[str, np.ndarray], meta: dict) -> dict[str, float]:
    img, txt = a["image_emb"].astype(np.float64), a["text_emb"].astype(np.float64)
    k = meta.get("cev_k", 10)
    out = {"modality_gap": float(np.linalg.norm(img.mean(0) - txt.mean(0)))}
    for name, x in (("image", img), ("text", txt)):
        out[f"{name}_effective_rank"] = effective_rank(x)
        cev = explained_variance(x)
        out[f"{name}_cev@{k}"] = float(cev[min(k, len(cev)) - 1]) if len(cev) else NAN
    return out


@dataclass(frozen=True)
class Group:
    compute: Callable[[dict[str, np.ndarray], dict], dict[str, float]]
    independent: bool = False  # arrays have different lengths and are resampled each on its own


GROUPS: dict[str, Group] = {
    "retrieval": Group(retrieval_metrics, independent=True),
    "captions": Group(caption_metrics),
    "pope": Group(pope_metrics),
    "throne": Group(throne_metrics),
    "sugarcrepe": Group(sugarcrepe_metrics),
    "mmstar": Group(mmstar_metrics),
    "geometry": Group(geometry_metrics, independent=True),
}


@dataclass
class PerItem:
    """Per-item arrays by group, plus each group's metadata (ks, split names, class names...)."""

    groups: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict[str, dict] = field(default_factory=dict)

    def add(self, group: str, meta: dict | None = None, **arrays) -> dict[str, float]:
        if group not in GROUPS:
            raise KeyError(f"unknown per-item group {group!r}; known: {sorted(GROUPS)}")
        self.groups[group] = {k: np.asarray(v) for k, v in arrays.items()}
        self.meta[group] = meta or {}
        return self.group_metrics(group)

    def group_metrics(self, group: str, arrays: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        return GROUPS[group].compute(arrays if arrays is not None else self.groups[group], self.meta[group])

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for group in self.groups:
            out.update(self.group_metrics(group))
        return out

    def metric_group(self) -> dict[str, str]:
        """Which group each metric key comes from."""
        return {key: group for group in self.groups for key in self.group_metrics(group)}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        arrays = {f"{g}/{k}": v for g, arrs in self.groups.items() for k, v in arrs.items()}
        arrays["__meta__"] = np.array(json.dumps(self.meta))
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PerItem":
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            groups: dict[str, dict[str, np.ndarray]] = {}
            for key in data.files:
                if key == "__meta__":
                    continue
                group, name = key.split("/", 1)
                groups.setdefault(group, {})[name] = data[key]
        return cls(groups=groups, meta=meta)
