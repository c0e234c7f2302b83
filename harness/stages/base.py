"""The stage contract: one kind of node in the grid, declared in one file (docs/extending.md, "A stage").

A stage says everything the rooms above need of it, so none of them names a stage:
- `name`, and `level`: where its nodes run in the order (every input at a lower level);
- `sections()` and `dataset_sections()`: its keys in a DAG and under each dataset, with their types and defaults;
- `resource_group`: the `resources.<group>` entry of the DAG its trials ask Ray for (default: its name);
- `check(dag)`: checks across sections, once the DAG is read;
- `nodes(plan)`: its nodes, from the DAG and the nodes of the levels before it, each keyed by what determines it;
- `run(node, files, progress)`: one node to completion, without Ray: it reads its inputs' folders and writes its own;
- `passes(node, counts)`: the node's work in image passes (`workloads.names.Passes`), what `harness plan` costs;
- `metrics(result)` and `artifacts`: what MLflow records of a node: numbers, and files of its folder;
- `rows(result)`, `report(runs, rows)` and `figures(rows, folder, baseline)`: its tables and figures in the
  report.
`register_stage` adds one; harness/stages/__init__.py imports the built-in ones, a plugin its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from harness.config.grid import DagConfig
from workloads.registry import Registry
from workloads.settings import Section

if TYPE_CHECKING:
    import polars as pl

MODEL = "model.pt"  # what a training stage leaves in its folder
Progress = Callable[[dict], None]  # sees {"epoch", "epochs", "loss"} or {"eps", "point", "points", "metric", METRIC}
Tables = dict[str, tuple[str, "pl.DataFrame"]]  # name -> (title, table)


def digest(obj: object) -> str:
    """A node key: 16 hex digits of the SHA-256 of `obj` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass
class Node:
    """One unit of work: its stage, its key, a label for people, the grid axes the report groups by, its validated
    settings, and the nodes it reads (`inputs`: role -> key; `upstream`: role -> that node's stage)."""

    stage: str
    key: str
    label: str
    axes: dict
    config: Section
    inputs: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, str] = field(default_factory=dict)

    def reads(self, **inputs: Node) -> Node:
        """This node, reading `inputs` (role -> node)."""
        self.inputs.update({role: n.key for role, n in inputs.items()})
        self.upstream.update({role: n.stage for role, n in inputs.items()})
        return self

    def to_dict(self) -> dict:
        return {"stage": self.stage, "key": self.key, "label": self.label, "axes": self.axes,
                "config": self.config.model_dump(), "inputs": self.inputs}


@dataclass(frozen=True)
class NodeFiles:
    """Where a running node writes (`folder`: complete once the store writes its result.json) and where each node
    it reads left its files (`inputs`: role -> folder)."""

    folder: Path
    inputs: dict[str, Path]


@dataclass
class Plan:
    """What a stage plans from: the DAG, each dataset's digest (the hash of its manifest: the data, not the folder
    it sits in) and the nodes of the levels planned before it."""

    dag: DagConfig
    data_digests: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    def of(self, stage: str) -> list[Node]:
        return [n for n in self.nodes if n.stage == stage]


class Stage:
    """Base class of a stage; see the module's docstring for what each member means."""

    name: ClassVar[str]
    level: ClassVar[int]
    resource_group: ClassVar[str | None] = None  # the DAG's `resources` entry its trials take (None: its name)
    trains: ClassVar[bool] = False  # its nodes train a model (what `harness plan` counts as trainings)
    artifacts: ClassVar[tuple[str, ...]] = ()  # files of a node's folder logged with its MLflow run

    @property
    def group(self) -> str:
        return self.resource_group or self.name

    def sections(self) -> dict[str, tuple[Any, Any]]:
        """DAG key -> (type, default or pydantic Field): the sections it reads."""
        return {}

    def dataset_sections(self) -> dict[str, tuple[Any, Any]]:
        """Key under each dataset -> (type, default or Field)."""
        return {}

    def check(self, dag: DagConfig) -> None:
        """Raise `workloads.errors.Invalid` where the DAG's sections do not fit together."""

    def nodes(self, plan: Plan) -> list[Node]:
        raise NotImplementedError

    def run(self, node: Node, files: NodeFiles, progress: Progress) -> dict:
        raise NotImplementedError

    def passes(self, node: Node, counts: dict[str, int]) -> float:
        """Image passes of `node`; `counts`: the images its dataset has per role (train, test, database,
        train_source, test_source)."""
        raise NotImplementedError

    def metrics(self, result: dict) -> dict[str, float]:
        return {}

    def rows(self, result: dict) -> list[dict]:
        """Its result as rows of a table (an attack: one per budget); the report reads them back."""
        return []

    def figures(self, rows: pl.DataFrame, folder: Path, baseline: str) -> dict[str, Path]:
        """Its figures, drawn into `folder`: table name -> the figure shown under that table."""
        return {}

    def report(self, runs: pl.DataFrame, rows: pl.DataFrame) -> Tables:
        """Its tables: `runs` has a row per finished node of any stage (`stage`, the axes, `metrics.*`,
        `param.*`), `rows` the rows of this stage's nodes with their axes."""
        return {}


STAGES: Registry[Stage] = Registry("stage", "stages")


def register_stage(cls: type[Stage]) -> type[Stage]:
    STAGES.add(cls.name, cls())
    return cls


def ordered() -> list[Stage]:
    """The registered stages in the order their levels run (registration order within a level)."""
    return sorted((STAGES.get(n) for n in STAGES.in_order()), key=lambda s: s.level)


def finite(v: object) -> bool:
    """A number MLflow can record."""
    import math

    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
