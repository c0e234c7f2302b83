"""The statistics behind every number and verdict of a report (docs/evaluation.md), from scipy and statsmodels.

- `wilson`: a proportion's 95% interval (an accuracy on n images);
- `bootstrap_mean`: a mean's 95% bootstrap interval (mAP over queries);
- `paired_greater`: "a above b" on paired outcomes (two models or attacks on the same images): the exact one-sided
  McNemar test (`mcnemar_greater`) on 0/1 outcomes, a one-sided paired t-test on AP values;
- `greater_by`: a paired one-sided test against a margin delta;
- `difference_interval`, `share_interval`, `mean_interval`: (1 - 2 alpha) intervals of a paired difference of 0/1
  outcomes, of a share, of a mean (BCa bootstrap), and `read`, which reads a region off such an interval and gives
  the p-value of that reading (the smallest alpha at which the interval lies in the region);
- `holm` and `bonferroni`: Holm's correction over the cells of a report, Bonferroni inside a minimum;
- `seeds_interval` / `read_seeds`: a mean over training seeds, its interval covering seeds and images;
- `images_to_decide`: roughly how many images a test would need, if the effect seen so far held;
- `median_interval` and `sign_test`: the median of censored per-image radii with its order-statistic interval, and
  the paired sign test of two models' radii.
Paired outcomes are arrays over the same images (or queries), in the same order: boolean arrays are 0/1 outcomes
(robust or not) and get exact binomial tests; float arrays are values in [0, 1] (a query's AP) and get paired
t-tests, with the sign test where the differences have no spread (the t statistic is then undefined).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

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
    """A mean's 95% BCa bootstrap interval (an mAP over queries; skewed AP values leave a percentile interval short
    of its coverage at a few dozen queries)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        v = float(values[0]) if len(values) else math.nan
        return v, v
    return mean_interval(values, ALPHA / 2, seed)


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


def holm(pvalues: list[float]) -> list[float]:
    if not pvalues:
        return []
    return [float(p) for p in multipletests(pvalues, method="holm")[1]]  # adjusted p-values: alpha plays no part


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


# ---- intervals, and the decisions read off them -------------------------------------------------------------------
# Every decision of a verdict is read off one (1 - 2 alpha) interval: lying above +delta, below -delta or inside
# +-delta are regions that cannot overlap, and "the interval lies in the region" at alpha is the one-sided test at
# alpha (the two one-sided tests, for equivalence). Its p-value, for Holm over the cells of a report, is the smallest
# alpha at which it still lies there.

def share_interval(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """A (1 - 2 alpha) Clopper-Pearson interval of a share k/n: each bound is the exact one-sided bound at alpha."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    return float(ci.low), float(ci.high)


def difference_interval(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """A (1 - 2 alpha) interval of mean(a) - mean(b) on paired 0/1 outcomes. The difference is d * (2 t - 1), with d
    the share of discordant pairs and t the share of them in a's favour; each gets an exact Clopper-Pearson interval
    at 1 - alpha (t conditional on the discordant count), and the difference's interval is their product's range:
    each one-sided bound errs with probability at most alpha (Bonferroni over the two). Exact at any n, conservative;
    with no discordant pair it is +-(the bound on d), which a small sample keeps wide."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n, only_a, only_b = len(a), int((a & ~b).sum()), int((~a & b).sum())
    if n == 0:
        return math.nan, math.nan
    d_lo, d_hi = share_interval(only_a + only_b, n, alpha / 2)
    t_lo, t_hi = share_interval(only_a, only_a + only_b, alpha / 2) if only_a + only_b else (0.0, 1.0)
    lows, highs = [d * (2 * t_lo - 1) for d in (d_lo, d_hi)], [d * (2 * t_hi - 1) for d in (d_lo, d_hi)]
    return float(min(lows)), float(max(highs))


def mean_interval(values: np.ndarray, alpha: float = ALPHA, seed: int = 0,
                  _result: object = None) -> tuple[float, float]:
    """A (1 - 2 alpha) interval of the mean of values in [-1, 1] (paired AP differences, or APs): the BCa bootstrap.
    Values with no spread (all c) have no bootstrap distribution: the exact bound on the share of values other than
    c (Clopper-Pearson, none seen) bounds the mean within [c - s (1 + c), c + s (1 - c)]."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return math.nan, math.nan
    if np.ptp(values) < 1e-12:
        c, s = float(values[0]), share_interval(0, len(values), alpha)[1]
        return c - s * (1 + c), c + s * (1 - c)
    with warnings.catch_warnings():  # far in the tails BCa may have no quantile: nan, which decides nothing
        warnings.simplefilter("ignore")
        ci = stats.bootstrap((values,), np.mean, confidence_level=1 - 2 * alpha, method="BCa",
                             n_resamples=0 if _result else RESAMPLES, bootstrap_result=_result,
                             rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


RESAMPLES = 4000  # a bootstrap resolves p-values down to about one over its resamples


@dataclass(frozen=True)
class Reading:
    """An estimate read off its interval: the value, the nominal (1 - 2 alpha) interval, the region it lies in
    (None: none) and that reading's p-value."""

    value: float
    lo: float
    hi: float
    n: int
    region: str | None
    p: float
    floor: float = 1e-16  # the smallest p-value the interval resolves: a p-value there means "at most"


def read(interval: Callable[[float], tuple[float, float]], value: float, n: int,
         regions: dict[str, Callable[[float, float], bool]], floor: float = 1e-16) -> Reading:
    """Which of `regions` (which must not overlap) the interval lies in, and the p-value of that reading: the smallest
    alpha >= floor at which the (1 - 2 alpha) interval still lies there (bisection: intervals shrink as alpha
    grows). A reading of no region has p 1."""
    lo, hi = interval(ALPHA)
    at_most = 0.5 - 1e-9
    inside = [name for name, holds in regions.items() if holds(*interval(at_most))]
    if not inside:
        return Reading(value, lo, hi, n, None, 1.0)
    holds = regions[inside[0]]
    low, high = math.log(floor), math.log(at_most)  # log alpha: the region holds at `high`, not known at `low`
    if holds(*interval(floor)):
        return Reading(value, lo, hi, n, inside[0], floor, floor)
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if holds(*interval(math.exp(mid))) else (mid, high)
    return Reading(value, lo, hi, n, inside[0], math.exp(high), floor)


def read_difference(a: np.ndarray, b: np.ndarray, regions: dict[str, Callable[[float, float], bool]]) -> Reading:
    """mean(a) - mean(b) on paired outcomes, read against `regions`: the exact interval on 0/1 outcomes, BCa on
    values (the bootstrap drawn once and reused at every alpha)."""
    d = _differences(a, b)
    if _binary(a) and _binary(b):
        return read(lambda alpha: difference_interval(a, b, alpha), float(d.mean()) if len(d) else math.nan,
                    len(d), regions)
    return _read_mean(d, regions)


def read_share(hits: np.ndarray, regions: dict[str, Callable[[float, float], bool]]) -> Reading:
    """The mean of values that are >= 0 by construction (0/1: a share, with its exact interval; else BCa)."""
    if _binary(hits):
        k, n = int(np.sum(hits)), len(hits)
        return read(lambda alpha: share_interval(k, n, alpha), k / n if n else math.nan, n, regions)
    return _read_mean(np.asarray(hits, dtype=float), regions, at_least=0.0)


def _read_mean(d: np.ndarray, regions: dict[str, Callable[[float, float], bool]],
               at_least: float = -1.0) -> Reading:
    """The mean of d, with its BCa interval (no lower than `at_least`, a bound d has by construction)."""
    value = float(d.mean()) if len(d) else math.nan
    if len(d) < 2 or np.ptp(d) < 1e-12:
        return read(lambda alpha: _clip(mean_interval(d, alpha), at_least), value, len(d), regions)
    drawn = stats.bootstrap((d,), np.mean, n_resamples=RESAMPLES, method="BCa", rng=np.random.default_rng(0))
    return read(lambda alpha: _clip(mean_interval(d, alpha, _result=drawn), at_least), value, len(d), regions,
                floor=1 / RESAMPLES)


def _clip(interval: tuple[float, float], at_least: float) -> tuple[float, float]:
    return max(interval[0], at_least), max(interval[1], at_least)


def bonferroni(pvalues: list[float]) -> float:
    """The p-value of the smallest of several tests, corrected for taking the smallest (1.0 where there are none)."""
    return min(1.0, min(pvalues) * len(pvalues)) if pvalues else 1.0


def seeds_interval(per_seed: list[np.ndarray], pooled: Callable[[float], tuple[float, float]],
                   alpha: float = ALPHA) -> tuple[float, float]:
    """A (1 - 2 alpha) interval of a mean over training seeds of per-image values (or paired differences), one
    array per seed. Each seed's mean carries both the seed's and its images' variation, so a t-interval over the
    seed means (S - 1 degrees of freedom) covers both; but seeds that happen to agree give it no width at all (three
    seeds at 0% read [0%, 0%]), so it is widened to `pooled`, the interval of every seed's images taken together
    (which alone would ignore the seeds): the hull of the two."""
    means = np.array([float(np.mean(d)) for d in per_seed])
    lo, hi = pooled(alpha)
    if len(means) >= 2 and np.ptp(means) > 1e-12:
        ci = stats.ttest_1samp(means, 0.0).confidence_interval(confidence_level=1 - 2 * alpha)
        lo, hi = min(lo, float(ci.low)), max(hi, float(ci.high))
    return lo, hi


def read_seeds(mine: list[np.ndarray], theirs: list[np.ndarray] | None,
               regions: dict[str, Callable[[float, float], bool]]) -> Reading:
    """The mean over seeds of mean(mine) - mean(theirs) (paired within each seed; `theirs` None: of mine alone),
    read against `regions` off `seeds_interval`, pooling the seeds' images exactly (0/1) or by BCa (values)."""
    d = [_differences(a, b) for a, b in zip(mine, theirs, strict=True)] if theirs is not None else [
        np.asarray(a, dtype=float) for a in mine]
    if theirs is not None and all(_binary(a) for a in mine) and all(_binary(b) for b in theirs):
        a, b = np.concatenate(mine), np.concatenate(theirs)

        def pooled(alpha: float) -> tuple[float, float]:
            return difference_interval(a, b, alpha)
        floor = 1e-16
    elif theirs is None and all(_binary(a) for a in mine):
        k, n = int(sum(int(np.sum(a)) for a in mine)), sum(len(a) for a in mine)

        def pooled(alpha: float) -> tuple[float, float]:
            return share_interval(k, n, alpha)
        floor = 1e-16
    else:
        flat = np.concatenate(d)
        drawn = None if np.ptp(flat) < 1e-12 else stats.bootstrap(
            (flat,), np.mean, n_resamples=RESAMPLES, method="BCa", rng=np.random.default_rng(0))

        def pooled(alpha: float) -> tuple[float, float]:
            return mean_interval(flat, alpha, _result=drawn)
        floor = 1 / RESAMPLES
    value = float(np.mean([x.mean() for x in d])) if d else math.nan
    return read(lambda alpha: seeds_interval(d, pooled, alpha), value, sum(len(x) for x in d), regions, floor)


# ---- radii: per-image smallest breaking distances, censored at the largest budget searched -------------------------
# A radius the attacks never reached is only known to lie above the bound: it is carried as +inf, so every order
# statistic and every sign below stays exact (a censored radius is larger than any observed one, equal to another
# censored one).


def median_interval(radii: np.ndarray) -> tuple[float, float, float]:
    """The median radius and its distribution-free 95% interval from order statistics (`scipy.stats.quantile_test`);
    +inf where the statistic is a censored radius ("above the bound")."""
    radii = np.asarray(radii, dtype=float)
    if len(radii) == 0:
        return math.nan, math.nan, math.nan
    median = float(np.sort(radii)[(len(radii) - 1) // 2])  # the lower median: an observed radius, never a mean
    ci = stats.quantile_test(radii, q=median if math.isfinite(median) else 0.0, p=0.5).confidence_interval(1 - ALPHA)
    return median, float(ci.low), float(ci.high)


def sign_test(mine: np.ndarray, theirs: np.ndarray) -> tuple[int, int, float]:
    """Paired radii on the same images: how many are larger in `mine`, how many smaller, and the two-sided exact sign
    test's p-value (ties, censored pairs included, carry no sign and drop out)."""
    with np.errstate(invalid="ignore"):  # inf - inf: both above the bound, a tie
        d = np.nan_to_num(np.asarray(mine, dtype=float) - np.asarray(theirs, dtype=float), nan=0.0)
    larger, smaller = int((d > 0).sum()), int((d < 0).sum())
    if larger + smaller == 0:
        return 0, 0, 1.0
    return larger, smaller, float(stats.binomtest(larger, larger + smaller, 0.5).pvalue)
