"""A DAG file's grid: its axes, the baseline rule, and the keys every DAG has.

    experiment: default
    datasets: {fashion-mnist: {root: data/fashion-mnist, source_classes: [0,1,2,3,4], target_classes: [5,6,7,8,9]}}
    tasks: {classification: {}, hashing: {bits: 32}}
    rules: [bp, usf, frsf, brsf]
    baseline: bp

`DagConfig` is the part of the schema that does not depend on the stages. Each stage adds the sections it reads
(`pretrain`, `finetune`, `evaluate`, `attacks`, `converge`: harness/stages/), the cost its size hints, and the
registries the names a field takes; harness/planning/dag.py assembles the whole schema and loads DAG files with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from harness.config.plugins import MODULE
from harness.config.trials import TrialSettings
from harness.config.verdicts import VerdictSettings
from workloads.datasets.options import DataOptions
from workloads.errors import ConfigError, Invalid
from workloads.settings import Device, Section, Seed


class TasksSection(Section):
    """Task name -> its options; only the tasks written are trained."""

    def chosen(self) -> dict[str, Section]:
        return {name: opts for name in type(self).model_fields if (opts := getattr(self, name)) is not None}


class DatasetEntry(DataOptions):
    """A prepared dataset and how to read it; the stages and the cost add keys of their own (per-dataset fine-tuning
    settings, size hints)."""

    tasks: TasksSection | None = None
    """Task options for this dataset only, e.g. {hashing: {topk: 1000}}: the field's mAP@k cut-off is 5000 for
    NUS-WIDE and MS-COCO, 1000 for ImageNet, the whole database for CIFAR-10."""

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str) -> str:
        """Relative to the working directory, as on the command line; an object-store URI as it is."""
        from workloads import storage

        if "://" in root and not root.startswith("file://"):
            try:
                return storage.check(root, "root")
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("root: ")) from None
        path = Path(root.removeprefix("file://")).expanduser()
        return str(path if path.is_absolute() else Path.cwd() / path)


def _experiment(name: str) -> str:
    if not name or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError("required: a name of letters, digits, '-', '_' or '.' (it names folders)")
    return name


def _store(location: str | None) -> str | None:
    from workloads import storage

    try:
        return None if location is None else storage.check(location, "store")
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix("store: ")) from None


def _module(name: str) -> str:
    if not MODULE.fullmatch(name):
        raise ValueError(f"{name!r} is not a module name: dotted Python names, e.g. my_pkg.rules")
    return name


class DagConfig(TrialSettings):
    """A DAG file: the grid's axes and the keys every DAG has; `harness.planning.dag.dag_model()` adds the stages'
    sections and narrows the names to the registries'."""

    experiment: Annotated[str, AfterValidator(_experiment)]
    """Required: the experiment's name in MLflow and of its folders under runs/ and results/."""
    description: str = ""
    plugins: list[Annotated[str, AfterValidator(_module)]] = []
    """Python modules of your own, imported before the DAG is checked, on the driver and on every Ray worker (shipped
    with the job): the rules, attacks, backbones, dataset formats, tasks and stages they register work here like
    the built-in ones (docs/extending.md)."""
    seeds: list[Seed] = [0]
    """Training seeds; every model is trained once per seed."""
    device: Device = "auto"
    weights: str | None = None
    """null: a BP pretrain stage on the source classes; imagenet or a state-dict file: no pretrain stage."""
    datasets: Annotated[dict[str, DatasetEntry], Field(min_length=1)]
    """Required: name -> a prepared dataset (`harness data prepare NAME --out ROOT`) and how to read it."""
    backbones: list[str] = ["resnet18"]
    tasks: TasksSection  # the registered tasks' options, and the default, come from dag_model()
    rules: list[str] = ["bp", "usf", "frsf", "brsf"]
    baseline: str = "bp"
    """The rule every other is compared with: the verdicts' reference and the model a transfer attack crafts on."""
    store: Annotated[str | None, AfterValidator(_store)] = None
    """Where the node folders and Ray Tune's storage live: a folder every Ray node reaches, or an object-store URI
    (s3://BUCKET/PREFIX, options in its query, e.g. ?endpoint_override=HOST:PORT&scheme=http) for nodes that
    share no disk (docs/cluster.md). null: the run folder. --store overrides it. Never credentials: every node's
    SDK environment gives them."""
    verdicts: VerdictSettings = VerdictSettings()
    """How the report decides each cell's verdict (docs/evaluation.md)."""

    @model_validator(mode="after")
    def _grid(self) -> DagConfig:
        unique(self.backbones, "backbones")
        unique(self.rules, "rules")
        tasks = list(self.task_options())
        if not tasks:
            raise Invalid("tasks", f"name at least one task: {', '.join(type(self.tasks).model_fields)}")
        for name, d in self.datasets.items():
            for task in d.tasks.chosen() if d.tasks is not None else {}:
                if task not in tasks:
                    raise Invalid(f"datasets.{name}.tasks.{task}", f"this DAG does not train {task!r}; it trains "
                                  f"{', '.join(tasks)}")
        return self

    def task_options(self, dataset: str | None = None) -> dict[str, dict]:
        """Task name -> its options, with a dataset's own (only the keys it writes) over the DAG's."""
        own = self.datasets[dataset].tasks if dataset is not None else None
        return {name: {**opts.model_dump(), **(own.chosen()[name].model_dump(exclude_unset=True)
                                               if own is not None and name in own.chosen() else {})}
                for name, opts in self.tasks.chosen().items()}


def unique(names: list, key: str) -> list:
    """`names`, refused where one is listed twice (`key` is where, in errors)."""
    if len(set(names)) != len(names):
        raise Invalid(key, "a name is listed twice")
    return names


def subset(chosen: list[str] | None, allowed: list[str], key: str) -> list[str]:
    """`chosen` (default: all of `allowed`), each one of `allowed`."""
    if not chosen:
        return list(allowed)
    for name in unique(chosen, key):
        if name not in allowed:
            raise Invalid(key, f"{name!r} is not one of this DAG's: {', '.join(allowed)}")
    return chosen
