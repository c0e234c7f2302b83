"""Evaluation: a fine-tuned model's clean metrics on the whole target test split, and what its rule does to the
gradient an attacker is handed (the angle between B and W, the cosine of the rule's and the exact input gradient).
"""

from __future__ import annotations

import polars as pl

from harness.stages.base import MODEL, Node, NodeFiles, Plan, Progress, Stage, Tables, digest, finite, register_stage
from harness.stages.tables import rule_order, sort_rules
from workloads.evaluate import EvaluateSettings
from workloads.names import Metric, Passes
from workloads.tasks import TASKS, get_task


@register_stage
class Evaluate(Stage):
    name, level = "evaluate", 2

    def sections(self) -> dict:
        return {"evaluate": (EvaluateSettings, EvaluateSettings())}

    def nodes(self, plan: Plan) -> list[Node]:
        cfg = plan.dag.evaluate
        return [Node(self.name, digest({"stage": self.name, "config": cfg.model_dump(), "model": ft.key}),
                     ft.label.replace("finetune", "evaluate", 1), dict(ft.axes), cfg).reads(model=ft)
                for ft in plan.of("finetune")]

    def run(self, node: Node, files: NodeFiles, progress: Progress) -> dict:
        from workloads.evaluate import evaluate_checkpoint

        result = evaluate_checkpoint(files.inputs["model"] / MODEL, node.config)
        progress({"evaluated": 1})
        return result

    def passes(self, node: Node, counts: dict[str, int]) -> float:
        db = counts["database"] if get_task(node.axes["task"]).kind == "hashing" else 0
        return (counts["test"] + db) * Passes.FORWARD + node.config.diagnostic_images * 2 * Passes.GRAD

    def metrics(self, result: dict) -> dict[str, float]:
        out = {k: v for k, v in result.get("metrics", {}).items() if finite(v)}
        out.update({k: v for k, v in result.get("diagnostics", {}).items() if k != "layers" and finite(v)})
        return out

    def report(self, runs: pl.DataFrame, rows: pl.DataFrame) -> Tables:
        ev = runs.filter(pl.col("stage") == self.name)
        return {"clean": ("Clean accuracy (top-1) and retrieval mAP", clean_table(ev)),
                "diagnostics": ("Diagnostics: feedback alignment and the gradient an attacker is handed",
                                diagnostics_table(ev))}


def clean_table(ev: pl.DataFrame) -> pl.DataFrame:
    """Per dataset, backbone and task: each rule's clean metric (the task's own: top-1 or mAP), mean over seeds."""
    out = []
    for r in ev.iter_rows(named=True):
        if r["task"] not in TASKS.names():  # an old run's task no longer registered: its metric is unknown
            continue
        task = get_task(r["task"])
        value = r.get(f"metrics.{task.metric}")
        if value is not None:
            out.append({"dataset": r["dataset"], "backbone": r["backbone"], "task": r["task"],
                        "metric": task.metric_label, "rule": r["rule"], "value": value})
    if not out:
        return pl.DataFrame()
    df = pl.DataFrame(out).group_by(["dataset", "backbone", "task", "metric", "rule"]).agg(pl.col("value").mean())
    wide = df.pivot(on="rule", index=["dataset", "backbone", "task", "metric"], values="value")
    ordered = rule_order([c for c in wide.columns if c not in ("dataset", "backbone", "task", "metric")])
    return wide.select(["dataset", "backbone", "task", "metric", *ordered]).sort(["dataset", "backbone", "task"])


def diagnostics_table(ev: pl.DataFrame) -> pl.DataFrame:
    cols = {f"metrics.{Metric.ANGLE}": "B-W angle (deg, mean over layers)",
            f"metrics.{Metric.GRAD_COSINE}": "cos(rule grad, exact grad)"}
    present = [c for c in cols if c in ev.columns]
    if ev.is_empty() or not present:
        return pl.DataFrame()
    df = ev.group_by(["dataset", "backbone", "task", "rule"]).agg([pl.col(c).mean() for c in present])
    return sort_rules(df.rename({c: cols[c] for c in present}), ["dataset", "backbone", "task", "rule"])
