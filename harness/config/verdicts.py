"""How the report decides each cell's verdict (docs/evaluation.md): the DAG's `verdicts` section.

Read by harness/analysis/verdicts.py; the parent MLflow run of each `harness run` logs it, so the report decides
with the settings of the run it reads.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from workloads.settings import Section

Share = Annotated[float, Field(ge=0, le=1)]


class VerdictSettings(Section):
    primary: dict[str, Share] = {}
    """Task (or task kind) -> the L-inf budget its answers are decided at, fixed by hand; a task named here neither
    by its name nor by its kind gets the budget its baseline model's outcomes choose (`calibrate_to`)."""
    calibrate_to: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """The chosen primary budget is the grid's where the baseline's worst case is closest to this accuracy (for
    retrieval: this share of the way from its clean mAP down to the attacks' floor at the largest budget)."""
    delta: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """The margin: a difference of accuracy (or of mAP) smaller than this is "no difference"."""
    bp_broken_below: dict[str, Share] = {"classification": 0.10, "hashing": 0.25}
    """Sanity, per task (or task kind): the strongest attack at the largest budget must take the baseline below this
    accuracy (or mAP; 0.25 is about chance on a 5-class retrieval database: chance mAP is roughly the share of
    relevant items)."""
    blackbox_weak_above: Annotated[float, Field(gt=0, le=1)] = 0.10
    """An L-inf black-box attack that leaves the baseline above this accuracy at the primary budget is marked too
    weak."""

    @classmethod
    def from_logged(cls, logged: dict) -> VerdictSettings:
        """The settings a run logged, read as they were meant: before retrieval had verdicts, `retrieval` was the
        hashing budget of a descriptive table and `bp_broken_below` one number, for classification."""
        logged = dict(logged)
        logged.setdefault("primary", {"classification": 0.1, "hashing": 0.1})  # before budgets were chosen
        if "retrieval" in logged:
            logged["primary"] = {**logged.get("primary", {"classification": 0.1})}
            logged["primary"].setdefault("hashing", logged.pop("retrieval"))
        if isinstance(logged.get("bp_broken_below"), float):
            logged["bp_broken_below"] = {**cls().bp_broken_below, "classification": logged["bp_broken_below"]}
        return cls.model_validate(logged)

    def for_task(self, values: dict[str, float], task: str) -> float | None:
        """A per-task setting (`primary`, `bp_broken_below`) of `task`: by its name, else by its kind (None: not
        set)."""
        from workloads.tasks import TASKS, get_task

        if task in values or task not in TASKS.names():  # a task no longer registered: by its name only
            return values.get(task)
        return values.get(get_task(task).kind)
