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


def write_outcomes(outcomes: pl.DataFrame, path: str | Path) -> Path:
    """The per-image table as parquet, written whole or not at all (`workloads.files.atomic_write`)."""
    return atomic_write(path, outcomes.write_parquet)
