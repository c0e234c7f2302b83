"""DAG files: the grid axes and each stage's settings, as one typed schema checked before any compute.

    dag = load_dag("dags/default.yaml", sets=["finetune.epochs=1"], files=["runs/default/search/best.yaml"])

The schema is assembled from what its owners declare: the grid and the harness's own keys (harness/config/), each
registered stage's sections (harness/stages/), the cost's size hints, each task's options and each attack's
parameters; the names a field takes come from the registries. It is built again after a registry grows (a plugin's
rule is a name like any other). `harness schema` writes it as dags/schema.json for editors. Everything not written
has its default; an unknown key is an error that names the file, the key and the nearest valid one.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, create_model, model_validator

import rules
from harness.config.grid import DagConfig, DatasetEntry, TasksSection
from harness.config.overrides import read_tree
from harness.config.plugins import load_plugins
from harness.config.trials import resources_section
from harness.planning.cost import SizeHints
from harness.stages import STAGES, ordered
from workloads import backbones
from workloads.attacks import ATTACKS
from workloads.settings import one_of, validate
from workloads.tasks import TASKS, get_task


class StagedDag(DagConfig):
    """DagConfig whose stages check their sections against each other once it is read."""

    @model_validator(mode="after")
    def _stages(self) -> StagedDag:
        for stage in ordered():
            stage.check(self)
        return self


def dag_model() -> type[DagConfig]:
    """The DAG schema with the sections of every registered stage and the names of every registered rule,
    backbone, task and attack."""
    return _model(tuple(rules.ordered_rules()), tuple(backbones.available_backbones()), tuple(TASKS.in_order()),
                  tuple(ATTACKS.in_order()), tuple(STAGES.in_order()))


@functools.cache
def _model(rule_names: tuple, backbone_names: tuple, task_names: tuple, attack_names: tuple,
           stage_names: tuple) -> type[DagConfig]:
    stages = ordered()
    tasks = create_model("Tasks", __base__=TasksSection,
                         **{n: (get_task(n).Options | None, None) for n in task_names})
    dataset = create_model("Dataset", __base__=DatasetEntry, tasks=(tasks | None, None),
                           sizes=(SizeHints | None, Field(None, description="Image counts for `harness plan` before "
                                                          "the data is prepared.")),
                           **{k: v for s in stages for k, v in s.dataset_sections().items()})
    resources = resources_section(tuple(dict.fromkeys(s.group for s in stages)))
    allowed = sorted(rule_names)
    return create_model(
        "Dag", __base__=StagedDag,
        datasets=(Annotated[dict[str, dataset], Field(min_length=1)], ...),
        backbones=(list[one_of(list(backbone_names))], ["resnet18"]),
        rules=(list[one_of(allowed)], ["bp", "usf", "frsf", "brsf"]),
        baseline=(one_of(allowed), Field("bp", description=DagConfig.model_fields["baseline"].description)),
        tasks=(tasks, Field(default_factory=lambda: tasks(classification={}))),
        resources=(resources, Field(resources(), description=DagConfig.model_fields["resources"].description)),
        **{k: v for s in stages for k, v in s.sections().items()},
    )


def json_schema() -> str:
    """dags/schema.json: what editors check DAG files against (`harness schema` writes it)."""
    schema = dag_model().model_json_schema()
    schema["title"] = "sigsym-harness DAG"
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


@dataclass
class Dag:
    path: str
    config: DagConfig

    @property
    def experiment(self) -> str:
        return self.config.experiment


def load_dag(path: str | Path, sets: list[str] | None = None, files: list[str] | None = None) -> Dag:
    """The validated DAG at `path`, with override `files` (YAML, e.g. what `harness search` writes) merged over it
    in order, then the `--set` values. The DAG's `plugins` are imported first: what they register is in the
    schema it is checked against."""
    tree, where = read_tree(path, sets, files)
    plugins = tree.get("plugins")
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        load_plugins(plugins, f"{where}: plugins")
    return Dag(str(path), validate(dag_model(), tree, where))
