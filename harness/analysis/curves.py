"""The robustness curve (docs/evaluation.md): each model's per-image worst case at every L-inf budget of the grid.

At a budget, an image counts as robust when every attack that saw it failed (each attack at its largest budget not
above it: budgets are nested), and a query counts with its lowest AP. Within one dataset x backbone x task x seed,
every model is read on the images all of them saw, so the curves compare like with like. The table carries each
point's 95% interval (Wilson for an accuracy, BCa bootstrap for an mAP); the figure draws them as bands.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from harness.analysis.outcomes import ACCURACY, MODEL, at_budget, measure_of, worst_case
from harness.stages.tables import rule_order
from workloads.attacks.outcomes import linf_only

GROUP = ("dataset", "backbone", "task", "seed")  # the models one curve panel compares


def worst_case_curve(outcomes: pl.DataFrame) -> pl.DataFrame:
    """One row per model and budget: the worst case with its interval and n (`outcomes`: one task kind)."""
    if outcomes.is_empty():
        return pl.DataFrame()
    m = measure_of(outcomes)
    grid = sorted(linf_only(outcomes)["eps"].unique().to_list())
    rows = []
    for _, group in outcomes.group_by(list(GROUP), maintain_order=True):
        for eps in grid:
            at = at_budget(group, eps)
            if at.is_empty():
                continue
            per_model = at.group_by(list(MODEL)).agg(pl.col("image").unique())
            shared = set.intersection(*(set(images) for images in per_model["image"].to_list()))
            for model, mine in at.group_by(list(MODEL), maintain_order=True):
                worst, _, _ = worst_case(mine, None, shared)
                lo, hi = worst.interval
                rows.append({**dict(zip(MODEL, model, strict=True)), "eps": eps,
                             "measure": "accuracy" if m is ACCURACY else "mAP", "worst": worst.value,
                             "worst_lo": lo, "worst_hi": hi, "n": worst.n})
    if not rows:
        return pl.DataFrame()
    order = {r: i for i, r in enumerate(rule_order(list({r["rule"] for r in rows})))}
    return pl.DataFrame(rows).sort([*GROUP, pl.col("rule").replace_strict(order), "eps"])


def curve_figure(curve: pl.DataFrame, path: Path, baseline: str = "bp") -> Path | None:
    """One panel per dataset x backbone x task: worst case against eps, one line per rule and seed (the baseline
    dashed), each with its 95% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if curve.is_empty():
        return None
    panels = curve.select("dataset", "backbone", "task").unique(maintain_order=True).rows()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    colours = {r: f"C{i}" for i, r in enumerate(rule_order(curve["rule"].unique().to_list()))}
    for ax, (dataset, backbone, task) in zip(axes[0], panels, strict=True):
        mine = curve.filter((pl.col("dataset") == dataset) & (pl.col("backbone") == backbone)
                            & (pl.col("task") == task))
        for (rule, seed), line in mine.group_by(["rule", "seed"], maintain_order=True):
            line = line.sort("eps")
            first = seed == mine.filter(pl.col("rule") == rule)["seed"].min()
            ax.plot(line["eps"], line["worst"], marker="o", color=colours[rule], label=rule if first else None,
                    linestyle="--" if rule == baseline else "-")
            ax.fill_between(line["eps"], line["worst_lo"], line["worst_hi"], color=colours[rule], alpha=0.15)
        ax.set_title(f"{dataset}/{backbone}/{task}")
        ax.set_xlabel("eps (L-inf, [0,1] pixels)")
        ax.set_ylabel(f"worst-case {mine['measure'][0]}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Worst case over every attack, per image, on the same images (95% bands)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
