"""Shapes the stages' report tables take: rules and attacks in registration order, budgets as columns.

Tables list rules and attacks in the order their import lines register them (`rules/__init__.py`,
`workloads/attacks/__init__.py`); names no longer registered (an old run's) come last, alphabetically. A table
gets a `task` column only where several tasks of one kind share it.
"""

from __future__ import annotations

import polars as pl

import rules
from workloads.attacks import ATTACKS, GRADIENT_SOURCES
from workloads.tasks import TASKS, get_task


def in_order(names: list[str], order: list[str]) -> list[str]:
    """`names` in registration order; names not registered, last, alphabetically."""
    return sorted(names, key=lambda r: (order.index(r) if r in order else len(order), r))


def rule_order(names: list[str]) -> list[str]:
    return in_order(names, rules.ordered_rules())


def kind_of(task: str) -> str:
    """A task's kind; a task no longer registered is taken for its own kind."""
    return get_task(task).kind if task in TASKS.names() else task


def of_kind(df: pl.DataFrame, kind: str) -> pl.DataFrame:
    """The rows of tasks of `kind`."""
    if df.is_empty():
        return df
    tasks = [t for t in df["task"].unique().to_list() if t is not None and kind_of(t) == kind]
    return df.filter(pl.col("task").is_in(tasks))


def task_axis(df: pl.DataFrame) -> list[str]:
    """["task"] where the rows hold several tasks (of one kind), else []."""
    return ["task"] if not df.is_empty() and df["task"].n_unique() > 1 else []


def sort_rules(df: pl.DataFrame, index: list[str]) -> pl.DataFrame:
    """Rows in a fixed order: the leading index columns, then attack, source and rule in registration order."""
    if "rule" not in df.columns or df.is_empty():
        return df
    order = {r: i for i, r in enumerate(rule_order(df["rule"].unique().to_list()))}
    src = {s: i for i, s in enumerate(GRADIENT_SOURCES)}
    atk = {a: i for i, a in enumerate(ATTACKS.in_order())}
    keyed = df.with_columns(
        pl.col("rule").replace_strict(order, default=99).alias("_r"),
        (pl.col("source").replace_strict(src, default=9) if "source" in df.columns else pl.lit(0)).alias("_s"),
        (pl.col("attack").replace_strict(atk, default=9) if "attack" in df.columns else pl.lit(0)).alias("_a"),
    )
    lead = [c for c in index if c not in ("rule", "source", "attack")]
    names = [c for c in ("attack",) if c in df.columns]  # attacks no longer registered: by name
    return keyed.sort([*lead, "_a", *names, "_s", "_r"]).drop(["_r", "_s", "_a"])


def by_budget(long: pl.DataFrame, index: list[str], metric: str, label: str = "eps") -> pl.DataFrame:
    """One row per `index`, a column per budget (`eps 0.1`), the metric's mean over seeds."""
    if long.is_empty():
        return long
    agg = long.group_by([*index, "eps"]).agg(pl.col(metric).mean()).sort([*index, "eps"])
    eps_values = sorted(agg["eps"].unique().to_list())
    table = agg.pivot(on="eps", index=index, values=metric, sort_columns=True)
    table = table.rename({str(e): f"{label} {e:g}" for e in eps_values if str(e) in table.columns})
    return sort_rules(table, index)
