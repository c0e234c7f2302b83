"""The statistics behind every number and verdict of a report (docs/evaluation.md), from scipy and statsmodels.

- `wilson`: a proportion's 95% interval (an accuracy on n images);
- `bootstrap_mean`: a mean's 95% bootstrap interval (mAP over queries);
- `paired_greater`: "a above b" on paired outcomes (two models or attacks on the same images): the exact one-sided
  McNemar test (`mcnemar_greater`) on 0/1 outcomes, a one-sided paired t-test on AP values;
- `greater_by` / `equivalent`: paired tests against a margin delta (one-sided; and equivalence within +-delta);
- `holm`: Holm's correction over the cells of a report;
- `t_interval`: a mean's t-interval across training seeds;
- `images_to_decide`: roughly how many images a test would need, if the effect seen so far held.
Paired outcomes are arrays over the same images (or queries), in the same order: boolean arrays are 0/1 outcomes
(robust or not) and get exact binomial tests; float arrays are values in [0, 1] (a query's AP) and get paired
t-tests, with the sign test where the differences have no spread (the t statistic is then undefined).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

ALPHA = 0.05
Z = 1.6448536269514722  # the one-sided 95% normal quantile


def wilson(k: int, n: int) -> tuple[float, float]:
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


def _binary(a: np.ndarray) -> bool:
    return np.asarray(a).dtype == bool


def _differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=float) - np.asarray(b, dtype=float)


def _mean_above(d: np.ndarray, m: float) -> float:
    """p-value of 'the mean paired difference is above m': a one-sided t-test; with no spread in d (t undefined), the
    sign test of d > m."""
    if np.ptp(d) < 1e-9:  # equal up to float rounding (a t statistic of rounding noise would be huge)
        return float(stats.binomtest(int((d > m).sum()), len(d), 0.5, alternative="greater").pvalue)
    return float(stats.ttest_1samp(d, m, alternative="greater").pvalue)


def paired_greater(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of 'a is above b' on paired outcomes: exact McNemar on 0/1 outcomes, a paired t-test on AP values."""
    if _binary(a) and _binary(b):
        return mcnemar_greater(a, b)
    d = _differences(a, b)
    return _mean_above(d, 0.0) if len(d) else 1.0


def mcnemar_greater(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of 'a succeeds more often than b' on paired 0/1 outcomes: an exact binomial test on the discordant
    pairs (the exact McNemar test, one-sided)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5, alternative="greater").pvalue)


def greater_by(a: np.ndarray, b: np.ndarray, delta: float) -> float:
    """p-value of 'mean(a) - mean(b) > delta' (delta >= 0) on paired outcomes. On 0/1 outcomes with discordant pairs
    only in a's favour the difference is their binomial share, tested exactly; otherwise a one-sided paired t-test."""
    d = _differences(a, b)
    if len(d) == 0:
        return 1.0
    if _binary(a) and _binary(b) and not (d < 0).any():
        return float(stats.binomtest(int((d > 0).sum()), len(d), delta, alternative="greater").pvalue)
    return _mean_above(d, delta)


def equivalent(a: np.ndarray, b: np.ndarray, delta: float) -> float:
    """p-value of '|mean(a) - mean(b)| < delta' on paired outcomes in [0, 1]. A paired difference is at most 1, so
    the difference of means is at most the share of pairs that differ at all, tested exactly (valid at any n, even
    with no differing pair); where the differences go both ways, two one-sided t-tests too, with a Bonferroni factor
    for taking the better of the two."""
    d = _differences(a, b)
    n = len(d)
    if n == 0:
        return 1.0
    bound = float(stats.binomtest(int((d != 0).sum()), n, delta, alternative="less").pvalue)
    if not (d > 0).any() or not (d < 0).any():
        return bound
    tost = max(float(stats.ttest_1samp(d, -delta, alternative="greater").pvalue),
               float(stats.ttest_1samp(d, delta, alternative="less").pvalue))
    return min(1.0, 2 * min(bound, tost))


def holm(pvalues: list[float]) -> list[float]:
    if not pvalues:
        return []
    return [float(p) for p in multipletests(pvalues, method="holm")[1]]  # adjusted p-values: alpha plays no part


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
    d = _differences(a, b)
    n, sd = len(d), float(d.std(ddof=1)) if len(d) > 1 else 0.0
    if n and not d.any():  # no discordant pair yet: equivalence needs (1 - delta)^n < alpha
        return int(math.ceil(math.log(ALPHA) / math.log(1 - delta)))
    gap = min(abs(d.mean() - m) for m in (delta, -delta, 0.0)) if n else 0.0
    if n == 0 or sd == 0 or gap == 0:
        return None
    return int(math.ceil(n * (Z / (gap / (sd / math.sqrt(n)))) ** 2))
