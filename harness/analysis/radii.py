"""Per-image robustness radii (docs/evaluation.md, "Radii"): how far each image is from being broken, per model.

An image's radius is the smallest L-inf distance at which any evidence broke it: 0 for an image the model gets wrong
clean, else the size of the smallest breaking perturbation any attack found (a fixed-budget attack's at the budgets
it broke the image, capped at the budget since float32 sizes land a hair over it; a minimal attack's such as `fmn`
wherever it lies inside the grid). An image nothing broke up to the largest budget of the grid is *censored* there:
its radius is only known to lie above the bound, and is carried as +inf. The share of radii above eps is then the
robustness curve's worst case at eps, so the curve and the radii tell one story; the radii add a per-image number
two models can be compared on:

- per model: n, the median radius with its order-statistic 95% interval ("> bound" where half or more are
  censored), and the censored share;
- per rule against the baseline, on the same images: how many radii are larger and smaller, and the exact sign
  test (ties and pairs censored on both sides carry no sign), Holm-adjusted over the table; and whether the
  direction agrees with the curve's (the mean gap between the two curves over the grid). Where it does not, the
  report says so: the two summaries weigh budgets differently, and neither should be read alone.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from harness.analysis import stats
from harness.analysis.outcomes import ACCURACY, ATTACK, MODEL, measure_of
from harness.stages.converge import RERUN
from harness.stages.tables import rule_order
from workloads.attacks.outcomes import linf_only

GROUP = ("dataset", "backbone", "task", "seed")  # the models one comparison holds: same images, same grid


def image_radii(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Per model and image (classification outcomes): `radius` (+inf: censored) and the panel's `bound`, on the
    images every attack saw on every model of its panel (a convergence re-run sees only survivors: it adds
    evidence, it does not narrow the images)."""
    lin = linf_only(outcomes)
    if lin.is_empty() or measure_of(lin) is not ACCURACY:
        return pl.DataFrame()
    lin = lin.with_columns(pl.col("source").fill_null("none"))
    first_pass = lin.filter(~pl.col("attack").str.starts_with(RERUN))
    seen = first_pass.group_by([*GROUP, "rule", *ATTACK]).agg(pl.col("image").unique())
    shared = {key: set.intersection(*(set(images) for images in part["image"].to_list()))
              for key, part in seen.group_by(list(GROUP))}
    keep = pl.DataFrame([(*key, image) for key, images in shared.items() for image in images],
                        schema=[*GROUP, "image"], orient="row").cast({"image": lin.schema["image"]})
    lin = lin.join(keep, on=[*GROUP, "image"], how="semi")
    bound = lin.group_by(list(GROUP)).agg(pl.col("eps").max().alias("bound"))
    clean = lin.group_by([*MODEL, "image"]).agg(pl.col("clean").all())
    # a break's size, capped at its budget; outcomes written before sizes were read back have the budget only
    size = pl.min_horizontal(pl.col("linf").cast(pl.Float64), "eps") if "linf" in lin.columns else pl.col("eps")
    broke = (lin.filter(pl.col("clean") & ~pl.col("robust_raw")).group_by([*MODEL, "image"])
             .agg(size.min().alias("broken_at")))
    per_image = clean.join(broke, on=[*MODEL, "image"], how="left").join(bound, on=list(GROUP))
    radius = (pl.when(~pl.col("clean")).then(0.0).when(pl.col("broken_at").is_not_null())
              .then(pl.col("broken_at")).otherwise(math.inf))
    return per_image.with_columns(radius.alias("radius")).select(*MODEL, "image", "radius", "bound").sort(
        [*MODEL, "image"])


def radii_table(outcomes: pl.DataFrame, curve: pl.DataFrame, baseline: str = "bp") -> pl.DataFrame:
    """One row per classification model: its radii summarised, and against the baseline of its panel; `curve` is
    `harness.analysis.curves.worst_case_curve` of the same outcomes."""
    radii = image_radii(outcomes)
    if radii.is_empty():
        return pl.DataFrame()
    rows = []
    for key, panel in radii.group_by(list(GROUP), maintain_order=True):
        vectors = {rule: part.sort("image")["radius"].to_numpy() for (rule,), part in panel.group_by(["rule"])}
        base = vectors.get(baseline)
        for rule in rule_order(list(vectors)):
            r = vectors[rule]
            median, lo, hi = stats.median_interval(r)
            row = {**dict(zip(GROUP, key, strict=True)), "rule": rule, "n": len(r), "bound": panel["bound"][0],
                   "median": median, "median_lo": lo, "median_hi": hi, "censored": float(np.isinf(r).mean())}
            if base is not None and rule != baseline:
                larger, smaller, p = stats.sign_test(r, base)
                row.update({"larger": larger, "smaller": smaller, "p": p,
                            "curve_agrees": _agrees(larger - smaller, _curve_gap(curve, key, rule, baseline))})
            rows.append(row)
    table = pl.DataFrame(rows, infer_schema_length=None)
    if "p" in table.columns:
        tested = table["p"].is_not_null()
        adjusted = iter(stats.holm(table.filter(tested)["p"].to_list()))
        table = table.with_columns(pl.Series("p_holm", [next(adjusted) if t else None for t in tested],
                                             dtype=pl.Float64))
    return table


def _curve_gap(curve: pl.DataFrame, key: tuple, rule: str, baseline: str) -> float:
    """The mean over the grid's budgets > 0 of the rule's worst case minus the baseline's (nan: no curve)."""
    if curve.is_empty():
        return math.nan
    panel = curve.filter(pl.all_horizontal(pl.col(c) == v for c, v in zip(GROUP, key, strict=True))
                         & (pl.col("eps") > 0))
    mine, theirs = (panel.filter(pl.col("rule") == r).sort("eps")["worst"].to_numpy() for r in (rule, baseline))
    if len(mine) == 0 or len(mine) != len(theirs):
        return math.nan
    return float(np.mean(mine - theirs))


def _agrees(radii_direction: int, curve_gap: float) -> str:
    """"yes" / "no" where both summaries point somewhere, "no direction" where either is level."""
    if math.isnan(curve_gap) or radii_direction == 0 or abs(curve_gap) < 1e-12:
        return "no direction"
    return "yes" if (radii_direction > 0) == (curve_gap > 0) else "no"


def radius_text(value: float, bound: float) -> str:
    """A radius as a report prints it: "> bound" where it is censored."""
    if math.isnan(value):
        return "n/a"
    return f"> {bound:g}" if math.isinf(value) else f"{value:.4f}"


def median_text(row: dict) -> str:
    """A `radii_table` row's median radius and its interval, as the report prints them."""
    return "{} [{}, {}]".format(*(radius_text(row[c], row["bound"]) for c in ("median", "median_lo", "median_hi")))


def radii_markdown_frame(table: pl.DataFrame) -> pl.DataFrame:
    """`radii_table` with its censored radii written out ("> bound"), for the report's markdown."""
    if table.is_empty():
        return table
    text = [median_text(r) for r in table.iter_rows(named=True)]
    p_values = [c for c in ("p", "p_holm") if c in table.columns]  # tiny ones would print as 0.000
    table = table.with_columns(pl.col(c).map_elements(lambda v: f"{v:.2g}", return_dtype=pl.String) for c in p_values)
    return (table.with_columns(pl.Series("median radius", text)).drop("median", "median_lo", "median_hi")
            .select(*GROUP, "rule", "n", "median radius", pl.exclude(*GROUP, "rule", "n", "median radius")))
