"""Confidence intervals for the report: Student t over replicas, bootstrap over benchmark documents.

Replicas (runs that differ only in `seed` / `finetune.seed`) give a t interval of their mean
and of their paired delta against the base model. A single run gets a percentile bootstrap
over the documents lm-eval scored (its per-document log), so a one-replica table still shows
how much the benchmark sample alone could move the number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """{"mean", "half", "n"}: mean ± half is the Student t interval; half is None for n < 2."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "half": None, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "half": float(half), "n": n}


def aggregate(metric: str, per_doc: Sequence) -> float | None:
    """A metric's corpus value from its per-document values, as lm-eval aggregates them:
    bits per byte from (log-likelihood, bytes) pairs, the mean of numbers otherwise."""
    if not per_doc:
        return None
    if isinstance(per_doc[0], (list, tuple)):
        if "bits_per_byte" not in metric:
            return None  # another weighted metric: no corpus formula here
        return -sum(a for a, _ in per_doc) / sum(b for _, b in per_doc) / math.log(2)
    return sum(per_doc) / len(per_doc)


def bootstrap(metric: str, per_doc: Sequence, paired: Sequence | None = None,
              seed: int = 0, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile interval of the corpus metric over documents resampled with replacement;
    with `paired` (the same documents scored by another model) of the difference
    metric(per_doc) - metric(paired), resampling both with the same draw."""
    import numpy as np

    if not per_doc or aggregate(metric, per_doc) is None:
        return None
    if paired is not None and len(paired) != len(per_doc):
        return None
    rng = np.random.default_rng(seed)
    n, values = len(per_doc), []
    for _ in range(BOOTSTRAP_RESAMPLES):
        pick = rng.integers(0, n, n)
        value = aggregate(metric, [per_doc[i] for i in pick])
        if paired is not None:
            value -= aggregate(metric, [paired[i] for i in pick])
        values.append(value)
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def ratio_interval(numerator, denominator, seed: int = 0,
                   confidence: float = CONFIDENCE) -> dict:
    """{"value", "low", "high"}: sum(numerator) / sum(denominator) over items (a share when the
    denominator is all ones, a precision when it marks the items counted) and its percentile
    bootstrap interval, items resampled with replacement; None where nothing is counted."""
    import numpy as np

    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if den.sum() == 0:
        return {"value": None, "low": None, "high": None}
    pick = np.random.default_rng(seed).integers(0, len(num), (BOOTSTRAP_RESAMPLES, len(num)))
    nums, dens = num[pick].sum(axis=1), den[pick].sum(axis=1)
    ratios = nums[dens > 0] / dens[dens > 0]  # a resample that counts nothing has no ratio
    low, high = np.quantile(ratios, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"value": float(num.sum() / den.sum()), "low": float(low), "high": float(high)}
