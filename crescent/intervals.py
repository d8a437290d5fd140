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
    values = resampled(metric, per_doc, paired, seed)
    return None if values is None else _percentiles(values, confidence)


def _percentiles(values, confidence: float) -> tuple[float, float]:
    """The central `confidence` share of bootstrap `values`: (low, high)."""
    import numpy as np

    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def resampled(metric: str, per_doc: Sequence, paired: Sequence | None = None, seed: int = 0):
    """The corpus metric (or the paired difference) over BOOTSTRAP_RESAMPLES draws of the
    documents with replacement, as an array; None where it cannot be computed."""
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
    return np.asarray(values)


def paired_test(metric: str, mine: Sequence, other: Sequence, seed: int = 0,
                confidence: float = CONFIDENCE) -> dict:
    """What a paired difference over documents can say, from one bootstrap draw: its
    percentile interval (`ci`), its two-sided p-value, the share of documents scored
    differently (discordance), and the smallest difference this many documents detect at 80%
    power and 5% two-sided from the spread of the per-document differences:
    (z_0.975 + z_0.8) * sd / sqrt(n). Only the interval where the metric is weighted (bits
    per byte); nothing where it cannot be computed."""
    import numpy as np

    found = {"ci": None, "p": None, "discordant": None, "detectable": None}
    values = resampled(metric, mine, other, seed)
    if values is None:
        return found
    found["ci"] = list(_percentiles(values, confidence))
    if isinstance(mine[0], (list, tuple)):
        return found
    diffs = np.asarray(mine, dtype=float) - np.asarray(other, dtype=float)
    sd = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0
    return {**found,
            "p": min(1.0, 2 * min(float(np.mean(values <= 0)), float(np.mean(values >= 0)))),
            "discordant": float(np.mean(diffs != 0)),
            "detectable": (1.959964 + 0.841621) * sd / math.sqrt(len(diffs))}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None)."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[i] = running
    return adjusted


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
