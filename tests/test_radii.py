"""Robustness radii: read off the per-image outcomes, they are the curve's survival function, and their comparison
with the baseline says when it points another way than the curve."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from harness.analysis.curves import worst_case_curve
from harness.analysis.radii import image_radii, radii_markdown_frame, radii_table, radius_text

GRID = [0.0, 0.02, 0.05, 0.1]
CELL = {"dataset": "d", "backbone": "b", "task": "classification", "seed": "0"}


def outcomes(rule: str, radii: list[float], attack: str = "fmn", source: str = "exact") -> pl.DataFrame:
    """The outcome rows an attack leaves for per-image radii (0: wrong clean; inf: never broken): at each budget an
    image is broken once its radius fits, with a perturbation of that size."""
    n, rows = len(radii), []
    for eps in GRID:
        broken = [0 < r <= eps for r in radii]
        rows.append(pl.DataFrame({**{k: [v] * n for k, v in CELL.items()}, "rule": [rule] * n, "attack": [attack] * n,
                                  "source": [source] * n, "image": range(n), "eps": [eps] * n, "norm": ["linf"] * n,
                                  "clean": [r > 0 for r in radii],
                                  "robust": [r > 0 and not b for r, b in zip(radii, broken, strict=True)],
                                  "robust_raw": [r > 0 and not b for r, b in zip(radii, broken, strict=True)],
                                  "linf": [np.float32(r) if b else np.float32(0) for r, b in
                                           zip(radii, broken, strict=True)]}))
    return pl.concat(rows)


def test_each_image_has_the_smallest_breaking_distance_over_every_attack():
    fmn = outcomes("bp", [0.0, 0.013, 0.07, math.inf, 0.09])
    pgd = outcomes("bp", [0.0, 0.05, 0.02, math.inf, math.inf], attack="pgd")  # breaks image 2 sooner
    radii = image_radii(pl.concat([fmn, pgd])).sort("image")["radius"].to_list()
    assert radii[0] == 0.0 and radii[3] == math.inf
    assert np.allclose(radii[1:3] + radii[4:], [0.013, 0.02, 0.09])


def test_the_share_of_radii_above_each_budget_is_the_curves_worst_case():
    rng = np.random.default_rng(0)
    draws = [list(np.where(rng.random(60) < 0.1, 0.0, np.where(rng.random(60) < 0.2, math.inf,
                                                                  rng.uniform(0.001, 0.1, 60)))) for _ in range(2)]
    table = pl.concat([outcomes("bp", draws[0]), outcomes("usf", draws[1]),
                       outcomes("bp", draws[1], attack="pgd"), outcomes("usf", draws[0], attack="pgd")])
    radii, curve = image_radii(table), worst_case_curve(table)
    for rule in ("bp", "usf"):
        mine = radii.filter(pl.col("rule") == rule)["radius"].to_numpy()
        for eps in GRID:
            point = curve.filter((pl.col("rule") == rule) & (pl.col("eps") == eps))["worst"].item()
            assert abs(float(np.mean(mine > eps)) - point) < 1e-12, (rule, eps)


def test_larger_radii_than_bp_on_most_images_read_larger_and_agree_with_the_curve():
    bp = [0.02] * 40 + [0.05] * 40 + [0.0] * 20
    usf = [0.05] * 40 + [0.1] * 40 + [0.0] * 20
    table = pl.concat([outcomes("bp", bp), outcomes("usf", usf)])
    row = radii_table(table, worst_case_curve(table)).filter(pl.col("rule") == "usf").row(0, named=True)
    assert (row["larger"], row["smaller"]) == (80, 0) and row["p"] < 1e-20
    assert row["curve_agrees"] == "yes" and row["n"] == 100
    assert math.isclose(row["median"], 0.05) and row["censored"] == 0


def test_radii_that_point_another_way_than_the_curve_are_said_to():
    # usf holds 40 images bp loses at 0.02 through every budget, and loses 60 that bp never loses at 0.1 only:
    # the curve's mean gap favours usf (+40, +40, -20 points), the radii favour bp (40 larger, 60 smaller)
    bp = [0.02] * 40 + [math.inf] * 60
    usf = [math.inf] * 40 + [0.1] * 60
    table = pl.concat([outcomes("bp", bp), outcomes("usf", usf)])
    row = radii_table(table, worst_case_curve(table)).filter(pl.col("rule") == "usf").row(0, named=True)
    assert (row["larger"], row["smaller"]) == (40, 60) and row["curve_agrees"] == "no"


def test_a_median_above_the_bound_is_written_as_such():
    table = pl.concat([outcomes("bp", [math.inf] * 6 + [0.02] * 4), outcomes("usf", [0.02] * 10)])
    radii = radii_table(table, worst_case_curve(table))
    bp = radii.filter(pl.col("rule") == "bp").row(0, named=True)
    assert math.isinf(bp["median"]) and bp["censored"] == 0.6 and bp["bound"] == 0.1
    assert radii_markdown_frame(radii)["median radius"][0].startswith("> 0.1 [")
    assert radius_text(math.inf, 0.1) == "> 0.1" and radius_text(0.0123, 0.1) == "0.0123"


def test_a_re_run_adds_evidence_without_narrowing_the_images():
    bp = outcomes("bp", [math.inf] * 10)
    rerun = outcomes("bp", [0.05] + [math.inf] * 3, attack="re-run apgd").filter(pl.col("eps") == 0.05)
    radii = image_radii(pl.concat([bp, rerun], how="diagonal"))
    assert radii.height == 10 and radii["radius"].to_list()[0] == 0.05


def test_outcomes_without_perturbation_sizes_read_each_break_at_its_budget():
    table = outcomes("bp", [0.0, 0.013, math.inf]).drop("linf")
    assert image_radii(table).sort("image")["radius"].to_list() == [0.0, 0.02, math.inf]

