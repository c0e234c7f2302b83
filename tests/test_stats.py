"""harness/analysis/stats.py against values computed here independently (scipy and statsmodels called directly, or by
hand), at the edges where a slip would hide: no data, one value, no spread, differences all one way."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

from harness.analysis import stats

B = np.array([True] * 6 + [False] * 4)
A = np.array([True] * 9 + [False])  # 3 images robust under A only, none under B only


def test_no_data_decides_nothing():
    empty_b, empty_f = np.array([], bool), np.array([], float)
    for a in (empty_b, empty_f):
        assert stats.paired_greater(a, a) == 1.0 and stats.greater_by(a, a, 0.05) == 1.0
        assert stats.equivalent(a, a, 0.05) == 1.0
    assert all(math.isnan(v) for v in (*stats.wilson(0, 0), *stats.bootstrap_mean(empty_f),
                                       *stats.t_interval([0.3])))
    assert stats.holm([]) == [] and stats.images_to_decide(empty_f, empty_f, 0.05) is None


def test_intervals_equal_the_libraries_at_95_percent():
    assert stats.wilson(7, 20) == pytest.approx(proportion_confint(7, 20, alpha=0.05, method="wilson"))
    assert stats.wilson(1, 1) == pytest.approx(proportion_confint(1, 1, alpha=0.05, method="wilson"))
    values = np.array([0.1, 0.4, 0.35, 0.9, 0.5, 0.65, 0.2])
    ci = sps.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile",
                       rng=np.random.default_rng(3)).confidence_interval
    assert stats.bootstrap_mean(values, seed=3) == (ci.low, ci.high)
    assert stats.bootstrap_mean(np.array([0.2, 0.8])) != (0.2, 0.2)  # two values already have an interval
    assert stats.bootstrap_mean(np.array([0.4, 0.4, 0.4])) == (0.4, 0.4)  # no spread: the value itself
    assert stats.bootstrap_mean(np.array([0.7])) == (0.7, 0.7)
    assert stats.t_interval([0.1, 0.3]) == pytest.approx(sps.t.interval(0.95, 1, loc=0.2, scale=0.1))
    assert stats.t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert stats.holm([0.04, 0.01]) == pytest.approx([0.04, 0.02])


def test_mcnemar_counts_the_discordant_pairs_each_way():
    assert stats.mcnemar_greater(A, B) == pytest.approx(0.5 ** 3)  # 3 discordant, all for A
    assert stats.mcnemar_greater(B, A) == 1.0 and stats.mcnemar_greater(A, A) == 1.0
    mixed = np.array([True, True, True, False, False, True])
    other = np.array([False, False, True, True, False, True])  # 2 for mixed, 1 for other
    assert stats.mcnemar_greater(mixed, other) == pytest.approx(sps.binomtest(2, 3, 0.5, "greater").pvalue)
    assert stats.paired_greater(list(A), list(B)) == stats.mcnemar_greater(A, B)  # lists of bools are 0/1 too


def test_greater_by_is_exact_one_way_and_a_t_test_otherwise():
    assert stats.greater_by(A, B, 0.1) == pytest.approx(sps.binomtest(3, 10, 0.1, "greater").pvalue)
    mixed = np.array([True, True, True, False, False, True])
    other = np.array([False, False, True, True, False, True])
    d = mixed.astype(float) - other
    assert stats.greater_by(mixed, other, 0.05) == pytest.approx(sps.ttest_1samp(d, 0.05, alternative="greater")
                                                                 .pvalue)
    x = np.array([0.3, 0.5, 0.45, 0.8])
    y = np.array([0.1, 0.45, 0.2, 0.5])
    assert stats.greater_by(x, y, 0.1) == pytest.approx(sps.ttest_1samp(x - y, 0.1, alternative="greater").pvalue)
    assert stats.greater_by(A, B.astype(float), 0.1) == pytest.approx(
        sps.ttest_1samp(A - B.astype(float), 0.1, alternative="greater").pvalue)  # one side floats: a t-test
    assert stats.paired_greater(x, y) == pytest.approx(sps.ttest_rel(x, y, alternative="greater").pvalue)


def test_no_spread_is_decided_by_the_sign_test():
    x = np.full(6, 0.5)
    assert stats.greater_by(x + 0.2, x, 0.1) == pytest.approx(0.5 ** 6)  # every difference 0.2 > 0.1
    assert stats.greater_by(x + 0.1, x, 0.1) == 1.0  # every difference exactly on the margin: not above it
    assert stats.paired_greater(x, x) == 1.0


def test_equivalence_bound_and_tost():
    x = np.array([0.3, 0.5, 0.45, 0.8, 0.6, 0.55, 0.4, 0.7])
    same = stats.equivalent(x, x, 0.05)
    assert same == pytest.approx(0.95 ** 8)  # no query differs: (1 - delta)^n, exactly
    up = x + np.array([0.01, 0, 0.02, 0, 0, 0.01, 0, 0])  # differences one way only: the bound alone
    assert stats.equivalent(up, x, 0.05) == pytest.approx(sps.binomtest(3, 8, 0.05, "less").pvalue)
    both = x + np.array([0.01, -0.01, 0.02, -0.02, 0.01, -0.01, 0.005, -0.005])
    d = both - x
    bound = sps.binomtest(8, 8, 0.05, "less").pvalue
    tost = max(sps.ttest_1samp(d, -0.05, alternative="greater").pvalue,
               sps.ttest_1samp(d, 0.05, alternative="less").pvalue)
    assert stats.equivalent(both, x, 0.05) == pytest.approx(min(1.0, 2 * min(bound, tost)))
    assert stats.equivalent(both, x, 0.05) < 0.05
    far = x + np.array([0.36, -0.24] * 4)  # mean 0.06: the upper one-sided test alone is p > 0.5
    assert stats.equivalent(far, x, 0.05) == 1.0  # the Bonferroni factor never takes a p-value above 1


def test_images_to_decide():
    assert stats.images_to_decide(B, B, 0.05) == math.ceil(math.log(0.05) / math.log(0.95))  # 59
    a = np.array([True, True, False, True, False, False, True, False])
    b = np.array([False, True, False, False, True, False, True, False])
    d = a.astype(float) - b
    gap = min(abs(d.mean() - m) for m in (0.05, -0.05, 0.0))
    want = math.ceil(8 * (stats.Z / (gap / (d.std(ddof=1) / math.sqrt(8)))) ** 2)
    assert stats.images_to_decide(a, b, 0.05) == want == 198
    x = np.array([0.25, 0.5, 0.0])  # exact in binary floating point: the differences are exactly 0.25
    assert stats.images_to_decide(x + 0.25, x, 0.25) is None  # a difference of exactly delta, no spread: never
    assert stats.images_to_decide(np.array([0.2]), np.array([0.1]), 0.05) is None  # one value: no spread yet
