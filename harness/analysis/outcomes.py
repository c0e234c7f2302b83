"""Per-image outcome tables, read at a budget: what a model's worst case is, and the estimates with their intervals.

An attack node leaves one row per image and budget (`workloads.attacks.run_attack`). What a row measures depends
on the task (`Measure`): a classifier's image is robust (0/1: `clean`, `robust`, `robust_raw`), a retrieval query
has an AP (`clean_ap`, `ap`, `ap_raw`). At a budget, each attack counts with its largest budget not above it
(budgets are nested), an image is robust when every attack failed on it, and a query's worst AP is its lowest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from harness.analysis import stats
from workloads.attacks.outcomes import linf_only

MODEL = ("dataset", "backbone", "task", "rule", "seed")
ATTACK = ("attack", "source")


@dataclass(frozen=True)
class Measure:
    """What a task's per-image outcome rows hold, and how its numbers are written."""

    clean: str  # the clean value per image
    value: str  # the value under attack, nested over budgets
    raw: str  # the value under this budget's own run
    unit: str  # what n counts
    percent: bool  # written as a percentage (an accuracy) or as a fraction (an mAP)

    def fmt(self, x: float) -> str:
        return f"{x:.1%}" if self.percent else f"{x:.3f}"


ACCURACY = Measure("clean", "robust", "robust_raw", "images", True)
RETRIEVAL = Measure("clean_ap", "ap", "ap_raw", "queries", False)


def measure_of(outcomes: pl.DataFrame) -> Measure:
    """Retrieval outcomes carry per-query APs; classification outcomes carry per-image robust flags."""
    return RETRIEVAL if RETRIEVAL.value in outcomes.columns else ACCURACY


@dataclass
class Estimate:
    """A proportion with its Wilson 95% interval and its n."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return stats.wilson(self.k, self.n)

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"{self.value:.1%} [{lo:.1%}, {hi:.1%}] (n={self.n})"


@dataclass
class MeanEstimate:
    """An mAP: the mean of per-query APs with its bootstrap 95% interval over queries, and its n."""

    values: np.ndarray

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def value(self) -> float:
        return float(self.values.mean()) if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return stats.bootstrap_mean(self.values)

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"mAP {self.value:.3f} [{lo:.3f}, {hi:.3f}] (n={self.n} queries)"


def estimate(values: np.ndarray) -> Estimate | MeanEstimate:
    """0/1 outcomes -> a proportion (Wilson); AP values -> a mean (bootstrap)."""
    values = np.asarray(values)
    return Estimate(int(values.sum()), len(values)) if values.dtype == bool else MeanEstimate(values.astype(float))



def at_budget(outcomes: pl.DataFrame, eps: float, columns: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Per model, attack and image: `columns` (the measure's clean and attacked value) at the attack's largest L-inf
    budget <= eps (nested budgets)."""
    if columns is None:
        m = measure_of(outcomes)
        columns = (m.clean, m.value)
    below = linf_only(outcomes).filter(pl.col("eps") <= eps + 1e-12).with_columns(pl.col("source").fill_null("none"))
    top = below.group_by([*MODEL, *ATTACK]).agg(pl.col("eps").max().alias("_top"))
    return (below.join(top, on=[*MODEL, *ATTACK]).filter(pl.col("eps") == pl.col("_top"))
            .select([*MODEL, *ATTACK, "image", *columns]))


def vector(df: pl.DataFrame, column: str | None = None) -> np.ndarray:
    return df.sort("image")[column or measure_of(df).value].to_numpy()


def attacks_of(at: pl.DataFrame) -> list[tuple]:
    """The (attack, source) pairs in a table, in a fixed order."""
    return [tuple(r) for r in at.select(ATTACK).unique().sort(ATTACK, nulls_last=True).iter_rows()]


def worst_case(at: pl.DataFrame, attacks: list[tuple] | None = None, images: set | None = None) -> tuple[
        Estimate | MeanEstimate, str, pl.DataFrame]:
    """One model's worst case at a budget, per image over all (or the given) attacks: robust under every one (or the
    lowest AP); which attacks broke the most images (or left the lowest mAP)."""
    m = measure_of(at)
    if attacks is not None:
        at = at.join(pl.DataFrame(attacks, schema=list(ATTACK), orient="row"), on=list(ATTACK), how="semi")
    if images is not None:
        at = at.filter(pl.col("image").is_in(sorted(images)))
    per_image = at.group_by("image").agg(pl.col(m.clean).min(), pl.col(m.value).min()).sort("image")
    if m is ACCURACY:
        breaks = (at.filter(pl.col("clean") & ~pl.col("robust")).group_by(ATTACK).len()
                  .sort(["len", "attack", "source"], descending=[True, False, False]))  # ties in a fixed order
        by = ", ".join(f"{r['attack']}/{r['source']} {r['len']}" for r in breaks.head(3).iter_rows(named=True))
    else:
        lowest = at.group_by(ATTACK).agg(pl.col(m.value).mean()).sort([m.value, "attack", "source"])
        by = ", ".join(f"{r['attack']}/{r['source']} {r[m.value]:.3f}" for r in lowest.head(3).iter_rows(named=True))
    return estimate(per_image[m.value].to_numpy()), by or "none", per_image


def pair(at: pl.DataFrame, attack: tuple, other: tuple, column: str | None = None) -> tuple[
        np.ndarray, np.ndarray] | None:
    """Two attacks' per-image values (robust, or AP) on the images both saw, or None if one did not run."""
    a = at.filter((pl.col("attack") == attack[0]) & (pl.col("source") == attack[1]))
    b = at.filter((pl.col("attack") == other[0]) & (pl.col("source") == other[1]))
    if a.is_empty() or b.is_empty():
        return None
    shared = sorted(set(a["image"].to_list()) & set(b["image"].to_list()))
    return (vector(a.filter(pl.col("image").is_in(shared)), column),
            vector(b.filter(pl.col("image").is_in(shared)), column))


def algorithms(at: pl.DataFrame, *sources: str) -> list[str]:
    """Attacks run with every one of `sources` on this model."""
    have = set(attacks_of(at))
    return sorted({a for a, _ in have if all((a, s) in have for s in sources)})



def retrieval_worst_case(outcomes: pl.DataFrame, eps: float) -> pl.DataFrame:
    """Per hashing model (the baseline included, whatever its siblings): clean mAP and the mAP of each query's worst
    AP over every attack and source at `eps` (each attack at its largest budget <= eps), with bootstrap 95%
    intervals."""
    if outcomes.is_empty():  # no hashing model was attacked
        return pl.DataFrame()
    rows = []
    for model, at in at_budget(outcomes, eps).sort([*MODEL, *ATTACK]).group_by(list(MODEL), maintain_order=True):
        worst, by, per_query = worst_case(at)
        clean = estimate(per_query[RETRIEVAL.clean].to_numpy())
        rows.append({**dict(zip(MODEL, model, strict=True)), "clean mAP": clean.value, "clean_lo": clean.interval[0],
                     "clean_hi": clean.interval[1], "worst mAP": worst.value, "worst_lo": worst.interval[0],
                     "worst_hi": worst.interval[1], "queries": worst.n, "lowest by": by})
    return pl.DataFrame(rows) if rows else pl.DataFrame()

