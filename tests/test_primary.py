"""The primary budget chosen from the baseline's outcomes alone (harness/stages/primary.py), and the convergence
re-run that reads it when it starts."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from test_verdicts import ap_table, table

from harness.planning.dag import load_dag
from harness.planning.plan import build_plan
from harness.stages import STAGES, NodeFiles
from harness.stages.primary import CALIBRATED, CHOICE, choose, chosen_budget
from workloads.attacks.outcomes import worst_by_budget

ROOT = Path(__file__).resolve().parent.parent


def test_the_worst_case_by_budget_is_per_image_over_attacks_with_nested_budgets_on_shared_images():
    pgd = table("bp", {("pgd", "exact"): {0: 1.0, 0.02: 0.3, 0.1: 0.1}})  # robust: the first 60, then 20 of 200
    square = table("bp", {("square", None): {0: 1.0, 0.1: 0.0}}, n=100)  # saw the first 100 images only
    budgets = worst_by_budget([pgd, square])
    assert budgets == {0.0: (1.0, 1.0), 0.02: (1.0, 0.6), 0.1: (1.0, 0.0)}  # on the 100 images both saw
    assert worst_by_budget([pgd.clear()]) == {}


def test_the_budget_is_where_the_baseline_is_closest_to_the_target():
    accuracy = {0.0: (0.94, 0.94), 0.02: (0.94, 0.555), 0.05: (0.94, 0.035), 0.1: (0.94, 0.0)}
    assert choose(accuracy, 0.5, accuracy=True)["eps"] == 0.02
    assert choose(accuracy, 0.03, accuracy=True)["eps"] == 0.05
    tie = {0.0: (1.0, 1.0), 0.01: (1.0, 0.6), 0.02: (1.0, 0.4)}
    assert choose(tie, 0.5, accuracy=True)["eps"] == 0.01  # equally close: the smaller budget
    # retrieval: halfway from the clean mAP (0.83) down to the floor at the largest budget (0.15): 0.49
    retrieval = {0.0: (0.83, 0.83), 0.03: (0.83, 0.44), 0.1: (0.83, 0.15)}
    chosen = choose(retrieval, 0.5, accuracy=False)
    assert chosen["eps"] == 0.03 and chosen["aim"] == pytest.approx(0.49)
    assert choose({0.0: (1.0, 1.0)}, 0.5, accuracy=True) == {}


def _smoke(shards: str, *overrides: str):
    return load_dag(ROOT / "dags" / "smoke.yaml", [f"datasets.fashion-mnist.root={shards}", *overrides])


def test_one_primary_node_per_baseline_model_unless_the_dag_fixes_the_budget(shards):
    nodes = build_plan(_smoke(shards))
    primary = [n for n in nodes if n.stage == "primary"]
    assert sorted((n.axes["rule"], n.axes["task"]) for n in primary) == [("bp", "classification"), ("bp", "hashing")]
    bp_attacks = {n.key for n in nodes if n.stage == "attack" and n.axes["rule"] == "bp"
                  and n.axes["attack"] != "boundary"}  # L2: never at an L-inf budget
    assert {k for n in primary for k in n.inputs.values()} == bp_attacks
    fixed = build_plan(_smoke(shards, "verdicts.primary={classification: 0.1}"))
    assert [n.axes["task"] for n in fixed if n.stage == "primary"] == ["hashing"]


def test_the_convergence_re_run_reads_the_chosen_budget_when_it_starts(shards, tmp_path):
    dag = _smoke(shards, "converge={attack: apgd, params: {steps: 2}}")
    nodes = build_plan(dag)
    re_runs = [n for n in nodes if n.stage == "converge"]
    assert re_runs and all("primary" in n.inputs and n.config.eps == [] for n in re_runs)
    fixed = [n for n in build_plan(_smoke(shards, "converge={attack: apgd}", "verdicts.primary={classification: "
                                                  "0.05}")) if n.stage == "converge"]
    assert fixed and all("primary" not in n.inputs and n.config.eps == [0.05] for n in fixed)

    # the primary node of bp's classifier, run on outcome tables: its choice lands in primary.json
    node = next(n for n in nodes if n.stage == "primary" and n.axes["task"] == "classification")
    inputs = {}
    for i, role in enumerate(node.inputs):
        inputs[role] = tmp_path / f"in{i}"
        inputs[role].mkdir()
        table("bp", {("pgd", "exact"): {0: 1.0, 0.05: 0.45, 0.1: 0.0}}, n=8).drop(
            "dataset", "backbone", "task", "rule", "seed", "attack", "source").with_columns(
            pl.lit("linf").alias("norm")).write_parquet(inputs[role] / "outcomes.parquet")
    folder = tmp_path / "out"
    folder.mkdir()
    result = STAGES.get("primary").run(node, NodeFiles(folder, inputs), lambda _: None)
    written = json.loads((folder / CHOICE).read_text())
    assert written["eps"] == result["eps"] == 0.05 and written["chosen_by"] == CALIBRATED  # 4 of 8 robust: 50%
    assert chosen_budget(NodeFiles(tmp_path, {"primary": folder})) == 0.05


def test_retrieval_outcomes_choose_by_map(tmp_path):
    outcomes = ap_table("bp", {("hag", "exact"): {0: 0.85, 0.03: 0.45, 0.1: 0.14}})
    budgets = worst_by_budget([outcomes])
    assert choose(budgets, 0.5, accuracy=False)["eps"] == 0.03
