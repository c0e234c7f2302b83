"""The statistics behind every number and verdict of a report (docs/evaluation.md), from scipy and statsmodels.

- `wilson`: a proportion's 95% interval (an accuracy on n images);
- `bootstrap_mean`: a mean's 95% bootstrap interval (mAP over queries);
- `mcnemar_greater`: exact one-sided McNemar test on paired outcomes (two models or attacks on the same images);
- `greater_by` / `equivalent`: paired tests against a margin delta (one-sided; and equivalence within +-delta);
- `holm`: Holm's correction over the cells of a report;
- `t_interval`: a mean's t-interval across training seeds;
- `images_to_decide`: roughly how many images a test would need, if the effect seen so far held.
Paired outcomes are 0/1 (or AP) arrays over the same images, in the same order.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05
Z = 1.6448536269514722  # the one-sided 95% normal quantile


def wilson(k: int, n: int) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return math.nan, math.nan
    lo, hi = proportion_confint(k, n, alpha=ALPHA, method="wilson")
    return float(lo), float(hi)


def bootstrap_mean(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        v = float(values[0]) if len(values) else math.nan
        return v, v
    ci = stats.bootstrap((values,), np.mean, confidence_level=1 - ALPHA, n_resamples=2000, method="percentile",
                         rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def mcnemar_greater(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of 'a succeeds more often than b' on paired 0/1 outcomes: an exact binomial test on the discordant
    pairs (the exact McNemar test, one-sided)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5, alternative="greater").pvalue)


def greater_by(a: np.ndarray, b: np.ndarray, delta: float) -> float:
    """p-value of 'mean(a) - mean(b) > delta' (delta >= 0) on paired 0/1 outcomes. With discordant pairs only in a's
    favour the difference is their binomial share, tested exactly; otherwise a one-sided paired t-test."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n, only_a, only_b = len(a), int((a & ~b).sum()), int((~a & b).sum())
    if n == 0:
        return 1.0
    if only_b == 0:
        return float(stats.binomtest(only_a, n, delta, alternative="greater").pvalue)
    return float(stats.ttest_1samp(a.astype(float) - b, delta, alternative="greater").pvalue)


def equivalent(a: np.ndarray, b: np.ndarray, delta: float) -> float:
    """p-value of '|mean(a) - mean(b)| < delta' on paired 0/1 outcomes. The difference is at most the share of
    discordant pairs, tested exactly (valid at any n, even with no discordant pair); where the discordant pairs go
    both ways, two one-sided t-tests too, with a Bonferroni factor for taking the better of the two."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n, only_a, only_b = len(a), int((a & ~b).sum()), int((~a & b).sum())
    if n == 0:
        return 1.0
    bound = float(stats.binomtest(only_a + only_b, n, delta, alternative="less").pvalue)
    if only_a == 0 or only_b == 0:
        return bound
    d = a.astype(float) - b
    tost = max(float(stats.ttest_1samp(d, -delta, alternative="greater").pvalue),
               float(stats.ttest_1samp(d, delta, alternative="less").pvalue))
    return min(1.0, 2 * min(bound, tost))


def holm(pvalues: list[float]) -> list[float]:
    from statsmodels.stats.multitest import multipletests

    if not pvalues:
        return []
    return [float(p) for p in multipletests(pvalues, alpha=ALPHA, method="holm")[1]]


def t_interval(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    mean, sem = float(values.mean()), float(stats.sem(values))
    if sem == 0:
        return mean, mean
    lo, hi = stats.t.interval(1 - ALPHA, len(values) - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def images_to_decide(a: np.ndarray, b: np.ndarray, delta: float) -> int | None:
    """Images a paired test of mean(a) - mean(b) against the nearer of +-delta (or 0) would need to decide at the
    spread seen so far: n * (z / z_seen)^2. None where no size would (the difference sits on the margin)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n, sd = len(d), float(d.std(ddof=1)) if len(d) > 1 else 0.0
    if n and not d.any():  # no discordant pair yet: equivalence needs (1 - delta)^n < alpha
        return int(math.ceil(math.log(ALPHA) / math.log(1 - delta)))
    gap = min(abs(d.mean() - m) for m in (delta, -delta, 0.0)) if n else 0.0
    if n == 0 or sd == 0 or gap == 0:
        return None
    return int(math.ceil(n * (Z / (gap / (sd / math.sqrt(n)))) ** 2))
