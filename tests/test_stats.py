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
        reading = stats.read_difference(a, a, {"any": lambda lo, hi: True})
        assert reading.n == 0 and math.isnan(reading.value)
    assert all(math.isnan(v) for v in (*stats.wilson(0, 0), *stats.bootstrap_mean(empty_f)))
    assert stats.holm([]) == [] and stats.images_to_decide(empty_f, empty_f, 0.05) is None


def test_intervals_equal_the_libraries_at_95_percent():
    assert stats.wilson(7, 20) == pytest.approx(proportion_confint(7, 20, alpha=0.05, method="wilson"))
    assert stats.wilson(1, 1) == pytest.approx(proportion_confint(1, 1, alpha=0.05, method="wilson"))
    values = np.array([0.1, 0.4, 0.35, 0.9, 0.5, 0.65, 0.2])
    ci = sps.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=stats.RESAMPLES, method="BCa",
                       rng=np.random.default_rng(3)).confidence_interval
    assert stats.bootstrap_mean(values, seed=3) == (ci.low, ci.high)
    assert stats.bootstrap_mean(np.array([0.2, 0.8])) != (0.2, 0.2)  # two values already have an interval
    assert stats.bootstrap_mean(np.array([0.4, 0.4, 0.4])) == (0.4, 0.4)  # no spread: the value itself
    assert stats.bootstrap_mean(np.array([0.7])) == (0.7, 0.7)
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


def test_the_interval_of_a_paired_difference_is_exact_and_shrinks_with_alpha():
    a, b = np.arange(200) < 75, np.arange(200) < 111  # 36 discordant pairs, all in b's favour
    lo, hi = stats.difference_interval(a, b)
    d = sps.binomtest(36, 200).proportion_ci(0.95, "exact")  # the discordant share, at 1 - alpha
    t = sps.binomtest(0, 36).proportion_ci(0.95, "exact")  # a's share of them
    assert (lo, hi) == pytest.approx((d.high * (2 * t.low - 1), d.low * (2 * t.high - 1)))
    assert stats.difference_interval(a, a) == pytest.approx((-0.01827534, 0.01827534))  # no discordant pair
    assert stats.difference_interval(a[:10], a[:10])[1] > 0.3  # ten images cannot show anything
    wide, narrow = stats.difference_interval(a, b, 0.01), stats.difference_interval(a, b, 0.2)
    assert wide[0] < lo < narrow[0] <= narrow[1] < hi < wide[1]
    assert stats.share_interval(3, 10) == pytest.approx(tuple(sps.binomtest(3, 10).proportion_ci(0.9, "exact")))


def test_a_mean_with_no_spread_is_bounded_by_the_share_that_could_differ():
    s = 1 - 0.05 ** (1 / 50)  # Clopper-Pearson's one-sided bound with none of 50 seen
    assert stats.mean_interval(np.zeros(50)) == pytest.approx((-s, s))
    assert stats.mean_interval(np.full(50, 0.4)) == pytest.approx((0.4 - 1.4 * s, 0.4 + 0.6 * s))


REGIONS = {"above": lambda lo, hi: lo > 0.05, "below": lambda lo, hi: hi < -0.05,
           "inside": lambda lo, hi: -0.05 < lo and hi < 0.05}


@pytest.mark.parametrize("binary", [True, False])
def test_a_reading_is_the_region_its_interval_lies_in_and_its_p_value_is_the_level_where_it_leaves(binary):
    """Regions cannot overlap: whatever the data, the nominal interval lies in the region read (p < alpha) or in
    none (p >= alpha), and the interval at the reading's p-value sits on the region's edge."""
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(10, 300))
        if binary:
            a, b = rng.random(n) < rng.random(), rng.random(n) < rng.random()
        else:
            a = rng.beta(2, 5, n)
            b = np.clip(a + rng.normal(rng.normal(0, 0.08), 0.1, n), 0, 1)
        r = stats.read_difference(a, b, REGIONS)
        holding = [name for name, holds in REGIONS.items() if holds(r.lo, r.hi)]
        assert len(holding) <= 1
        assert (r.p < stats.ALPHA) == bool(holding) and (not holding or holding == [r.region])
        if binary and r.region is not None and r.p > 1e-12:
            assert REGIONS[r.region](*stats.difference_interval(a, b, r.p * 1.01))
            assert not REGIONS[r.region](*stats.difference_interval(a, b, r.p * 0.99))


def test_the_paired_difference_interval_covers_at_its_level():
    """Coverage by simulation: 300 paired samples of 200 images at each of three settings (no difference, a small
    one, a large one with many discordant pairs); the 90% interval must cover the true difference at least 90% of
    the time (it is conservative by construction)."""
    rng = np.random.default_rng(0)
    for p_a_only, p_b_only in ((0.02, 0.02), (0.05, 0.10), (0.25, 0.05)):
        covered = 0
        for _ in range(300):
            u = rng.random(200)
            a = (u < p_a_only) | (u > 1 - 0.4)  # 40% robust under both
            b = ((u >= p_a_only) & (u < p_a_only + p_b_only)) | (u > 1 - 0.4)
            lo, hi = stats.difference_interval(a, b)
            covered += lo <= p_a_only - p_b_only <= hi
        assert covered / 300 >= 0.9, (p_a_only, p_b_only, covered)


def test_bca_intervals_of_skewed_aps_cover_at_their_level():
    """Skewed AP values (most queries near 0, a few near 1) at 32 and 200 queries: the 95% BCa interval of their
    mean covers the true mean in at least 90% of 200 draws (a percentile interval fell to about 91% at 32)."""
    rng = np.random.default_rng(1)
    true = 0.5 / (0.5 + 3)  # the mean of Beta(0.5, 3)
    for n in (32, 200):
        covered = sum(lo <= true <= hi for lo, hi in
                      (stats.bootstrap_mean(rng.beta(0.5, 3, n), seed=i) for i in range(200)))
        assert covered / 200 >= 0.9, (n, covered)


def test_bonferroni_corrects_the_smallest_of_several_tests():
    assert stats.bonferroni([0.01, 0.2, 0.5]) == pytest.approx(0.03)
    assert stats.bonferroni([0.6, 0.9]) == 1.0 and stats.bonferroni([]) == 1.0


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


def test_the_seed_interval_is_the_t_interval_of_seed_means_widened_to_the_pooled_images():
    pooled = (-0.01, 0.01)
    means = [np.full(10, 0.1), np.full(10, 0.3), np.full(10, 0.2)]
    t = sps.ttest_1samp([0.1, 0.3, 0.2], 0).confidence_interval(0.9)
    assert stats.seeds_interval(means, lambda alpha: (0.19, 0.21)) == pytest.approx((t.low, t.high))
    agree = [np.zeros(200, bool)] * 3  # three seeds at 0%: the t-interval has no width; the images' bound does
    assert stats.seeds_interval(agree, lambda alpha: pooled) == pooled
    r = stats.read_seeds(agree, agree, {"inside": lambda lo, hi: -0.05 < lo and hi < 0.05})
    assert r.region == "inside" and r.hi == pytest.approx(stats.difference_interval(np.zeros(600, bool),
                                                                                    np.zeros(600, bool))[1])


def test_the_seed_interval_covers_a_mean_over_seeds_and_images_by_simulation():
    """Five seeds whose models differ (the seed effect: robust rates spread 6 points around 40%), 200 images each,
    0/1 outcomes: the 90% interval of the mean covers the population's 40% in at least 88% of 300 draws (89% here;
    the 1,000 images pooled as if one sample cover 58%)."""
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(300):
        rates = np.clip(rng.normal(0.4, 0.06, 5), 0, 1)
        seeds = [rng.random(200) < r for r in rates]
        r = stats.read_seeds(seeds, None, {})
        covered += r.lo <= 0.4 <= r.hi
    assert covered / 300 >= 0.88, covered


def test_censored_pairs_carry_a_sign_only_where_one_side_is_observed():
    inf = math.inf
    mine = np.array([inf, inf, 0.03, 0.01, 0.0, 0.02])
    theirs = np.array([inf, 0.05, inf, 0.02, 0.0, 0.02])
    larger, smaller, p = stats.sign_test(mine, theirs)
    assert (larger, smaller) == (1, 2)  # both censored and the equal pairs are ties
    assert p == pytest.approx(1.0)
    larger, smaller, p = stats.sign_test(np.full(30, inf), np.full(30, 0.01))
    assert (larger, smaller) == (30, 0) and p == pytest.approx(2 * 0.5 ** 30)


def test_the_median_radius_interval_is_exact_order_statistics_and_open_where_censored():
    values = np.arange(1, 101) / 1000
    median, lo, hi = stats.median_interval(values)
    # ranks 40 and 61 of 100: P(40 <= K <= 60) = 96.5% for K ~ Binomial(100, 1/2), the shortest such pair
    assert median == 0.050 and lo == 0.040 and hi == 0.061
    assert sps.binom.cdf(60, 100, 0.5) - sps.binom.cdf(39, 100, 0.5) >= 0.95
    censored = np.concatenate([np.arange(1, 46) / 1000, np.full(55, math.inf)])
    median, lo, hi = stats.median_interval(censored)
    assert math.isinf(median) and math.isinf(hi) and lo == 0.040


def test_the_median_radius_interval_covers_the_true_median_of_a_censored_distribution():
    rng = np.random.default_rng(3)
    bound, true_median = 0.1, -math.log(0.5) / 20  # exponential radii, rate 20: median 0.0347
    covered = 0
    for _ in range(400):
        radii = rng.exponential(1 / 20, 200)
        radii[radii > bound] = math.inf
        _, lo, hi = stats.median_interval(radii)
        covered += lo <= true_median <= hi
    assert 0.93 <= covered / 400 <= 0.995
