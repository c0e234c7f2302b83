"""Per-image outcome tables, the evidence every verdict rests on: one row per image and budget, as `run_attack`
writes them (`image`, `eps`, `norm`, `clean`/`robust`/`robust_raw` or `clean_ap`/`ap`/`ap_raw`, `linf`, `l2`,
`invalid`), stored beside a node's result as parquet.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from workloads.files import atomic_write


def linf_only(outcomes: pl.DataFrame) -> pl.DataFrame:
    """The L-inf attacks' outcomes (an L2 attack's budgets are another scale: it never counts at an L-inf one)."""
    return outcomes.filter(pl.col("norm") == "linf") if "norm" in outcomes.columns else outcomes


def survivors(tables: list[pl.DataFrame], eps: float) -> list[int]:
    """The images robust at L-inf budget `eps` under every one of these attack outcome tables that saw them (each
    at its largest budget <= eps): what the convergence re-run attacks."""
    parts = []
    for t in tables:
        below = linf_only(t).filter(pl.col("eps") <= eps + 1e-12)
        if not below.is_empty():
            parts.append(below.filter(pl.col("eps") == below["eps"].max()).select("image", "robust"))
    if not parts:
        return []
    per_image = pl.concat(parts).group_by("image").agg(pl.col("robust").all())
    return sorted(per_image.filter(pl.col("robust"))["image"].to_list())


def worst_by_budget(tables: list[pl.DataFrame]) -> dict[float, tuple[float, float]]:
    """Per L-inf budget of these tables (one model's attacks): (the clean value, the worst case), as means over the
    images every attack saw: an image counts with its lowest value (robust 0/1, or AP) over the attacks, each at its
    largest budget <= that budget (budgets are nested). What the primary budget is chosen from."""
    tables = [linf_only(t) for t in tables if not linf_only(t).is_empty()]
    if not tables:
        return {}
    clean, value = ("clean", "robust") if "robust" in tables[0].columns else ("clean_ap", "ap")
    shared = set.intersection(*(set(t["image"].to_list()) for t in tables))
    grid = sorted(set().union(*(t["eps"].unique().to_list() for t in tables)))
    out = {}
    for eps in grid:
        parts = []
        for t in tables:
            below = t.filter((pl.col("eps") <= eps + 1e-12) & pl.col("image").is_in(sorted(shared)))
            if not below.is_empty():
                parts.append(below.filter(pl.col("eps") == below["eps"].max()).select("image", clean, value))
        per_image = pl.concat(parts).group_by("image").agg(pl.col(clean).cast(pl.Float64).min(),
                                                           pl.col(value).cast(pl.Float64).min())
        out[float(eps)] = (float(per_image[clean].mean()), float(per_image[value].mean()))
    return out


def write_outcomes(outcomes: pl.DataFrame, path: str | Path) -> Path:
    """The per-image table as parquet, written whole or not at all (`workloads.files.atomic_write`)."""
    return atomic_write(path, outcomes.write_parquet)
