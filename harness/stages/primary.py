"""The primary budget, chosen from the baseline alone (docs/evaluation.md, "The primary budget").

A budget where every model is broken (or none is) says nothing about which is more robust. After the attacks, one
node per baseline model (bp by default; per dataset x backbone x task x seed) reads the baseline's per-image
outcomes only, and picks the L-inf budget of the grid where its worst case over every attack is closest to the
target: `verdicts.calibrate_to` (0.5) of the accuracy, or for retrieval that share of the way from the clean mAP
down to the attacks' floor at the largest budget (about chance, which the sanity check "attacks break bp" asks
for). It writes the choice to `primary.json` (and MLflow records it with the node) before any verdict is read; the
convergence re-run and the report read it from there. A task named in `verdicts.primary` keeps the budget given
there, and gets no such node.
"""

from __future__ import annotations

import json

import polars as pl

from harness.stages.attack import OUTCOMES
from harness.stages.base import Node, NodeFiles, Plan, Progress, Stage, digest, register_stage
from workloads.attacks import get_attack
from workloads.attacks.outcomes import worst_by_budget
from workloads.files import atomic_write_text
from workloads.settings import Section

CHOICE = "primary.json"  # the chosen budget, in the node's folder
CALIBRATED = "calibration on the baseline"  # how a chosen budget was chosen, as the report says


class PrimaryChoice(Section):
    """What a primary-budget node decides with."""

    target: float
    baseline: str


def choose(budgets: dict[float, tuple[float, float]], target: float, accuracy: bool) -> dict:
    """The budget > 0 whose worst case is closest to the target (the smaller one on a tie), with what it read."""
    grid = sorted(e for e in budgets if e > 0)
    if not grid:
        return {}
    clean, floor = budgets[min(budgets)][0], budgets[max(budgets)][1]
    aim = target if accuracy else floor + target * (clean - floor)
    eps = min(grid, key=lambda e: (abs(budgets[e][1] - aim), e))
    return {"eps": eps, "aim": aim, "worst": budgets[eps][1], "worst_by_budget": {str(e): budgets[e][1] for e in grid}}


@register_stage
class Primary(Stage):
    name, level = "primary", 4
    resource_group = "attack"
    artifacts = (CHOICE,)

    def nodes(self, plan: Plan) -> list[Node]:
        dag, out = plan.dag, []
        for ft in plan.of("finetune"):
            a = ft.axes
            if a["rule"] != dag.baseline or dag.verdicts.for_task(dag.verdicts.primary, a["task"]) is not None:
                continue
            evidence = [n for n in plan.of("attack") if n.inputs["model"] == ft.key
                        and get_attack(n.config.attack).norm_of(n.config.params) == "linf"]
            if not evidence:
                continue
            cfg = PrimaryChoice(target=dag.verdicts.calibrate_to, baseline=dag.baseline)
            inputs = {f"evidence {i}": n for i, n in enumerate(evidence)}
            key = digest({"stage": self.name, "config": cfg.model_dump(),
                          "inputs": {r: n.key for r, n in inputs.items()}})
            out.append(Node(self.name, key, f"primary budget from {a['rule']} on {a['task']} "
                            f"{a['dataset']}/{a['backbone']}/s{a['seed']}", dict(a), cfg).reads(**inputs))
        return out

    def run(self, node: Node, files: NodeFiles, progress: Progress) -> dict:
        tables = [pl.read_parquet(files.inputs[role] / OUTCOMES) for role in node.inputs]
        accuracy = any("robust" in t.columns for t in tables)
        result = choose(worst_by_budget(tables), node.config.target, accuracy)
        if not result:
            raise ValueError(f"{node.label}: the baseline was attacked at no L-inf budget above 0; give its "
                             "attacks a grid of budgets, or fix the budget in `verdicts.primary`")
        result.update({"chosen_by": CALIBRATED, "target": node.config.target})
        atomic_write_text(files.folder / CHOICE, json.dumps(result, indent=1))  # before result.json marks it done
        progress({"eps": result["eps"], "point": 1, "points": 1, "metric": "worst", "worst": result["worst"]})
        return result

    def passes(self, node: Node, counts: dict[str, int]) -> float:
        return 0.0  # reads tables; no image passes

    def metrics(self, result: dict) -> dict[str, float]:
        return {"primary_eps": result["eps"], "primary_worst": result["worst"]}


def chosen_budget(files: NodeFiles) -> float:
    """The budget a primary node chose, read from its folder (by the nodes that read it)."""
    return float(json.loads((files.inputs["primary"] / CHOICE).read_text())["eps"])
