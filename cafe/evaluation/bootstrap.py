"""Bootstrap confidence intervals of every metric, from the per-item results.

Rows of each per-item group are resampled with replacement and the group's own metric function is applied
to the resample, so the interval belongs to exactly the reported number. With a reference evaluated on the
same items (same group, same row counts), both are resampled with the *same* rows: the paired bootstrap of
the difference, which is much tighter than two independent intervals.
"""

from __future__ import annotations

import warnings

import numpy as np

from cafe.evaluation.per_item import GROUPS, PerItem


def _draw(arrays: dict[str, np.ndarray], group: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Row indices for one resample: one draw shared by all arrays, or (independent groups) one per array
    or set of arrays that share rows."""
    spec = GROUPS[group]
    if spec.independent:
        idx: dict[str, np.ndarray] = {}
        for k, v in arrays.items():
            if k not in idx:
                draw = rng.integers(0, len(v), len(v))
                for member in next((s for s in spec.rows if k in s), (k,)):
                    idx[member] = draw
        return {k: idx[k] for k in arrays}
    n = len(next(iter(arrays.values())))
    idx = rng.integers(0, n, n)
    return {k: idx for k in arrays}


def _same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(len(a[k]) == len(b[k]) for k in a)


def bootstrap_samples(per_item: PerItem, resamples: int = 1000, seed: int = 0, reference: PerItem | None = None,
                      group_resamples: dict[str, int] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Resampled values of every metric, and (where the reference has the same items) the reference's
    values on the same resamples."""
    values: dict[str, list[float]] = {}
    ref_values: dict[str, list[float]] = {}
    for g, (group, arrays) in enumerate(per_item.groups.items()):
        n_res = (group_resamples or {}).get(group, resamples)
        rng = np.random.default_rng([seed, g])
        ref_arrays = reference.groups.get(group) if reference is not None else None
        paired = ref_arrays is not None and _same_rows(arrays, ref_arrays)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for _ in range(n_res):
                idx = _draw(arrays, group, rng)
                for key, v in per_item.group_metrics(group, {k: a[idx[k]] for k, a in arrays.items()}).items():
                    values.setdefault(key, []).append(v)
                if paired:
                    resampled = {k: a[idx[k]] for k, a in ref_arrays.items()}
                    for key, v in GROUPS[group].compute(resampled, reference.meta[group]).items():
                        ref_values.setdefault(key, []).append(v)
    return ({k: np.asarray(v, dtype=float) for k, v in values.items()},
            {k: np.asarray(v, dtype=float) for k, v in ref_values.items()})


def interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval; None when every resample is NaN."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def confidence_intervals(per_item: PerItem, resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                         group_resamples: dict[str, int] | None = None) -> dict[str, tuple[float, float] | None]:
    samples, _ = bootstrap_samples(per_item, resamples, seed, group_resamples=group_resamples)
    return {k: interval(v, confidence) for k, v in samples.items()}
