"""DAG files: the grid axes and each stage's settings, as one typed schema checked before any compute.

    experiment: default
    datasets: {fashion-mnist: {root: data/fashion-mnist, source_classes: [0,1,2,3,4], target_classes: [5,6,7,8,9]}}
    tasks: {classification: {}, hashing: {bits: 32}}
    rules: [bp, usf, frsf, brsf]
    attacks:
      - {name: pgd, sources: [rule, exact, transfer], eps: [0, 0.05, 0.1], n: 200, params: {steps: 5}}
      - {name: boundary, eps: [0, 0.1], n: 20, rules: [bp, frsf]}

The schema is assembled from the sections their owners declare: a dataset's `DataOptions`, the training stages'
settings (workloads/train.py), the evaluate stage's, each task's options and each attack's parameters, and the
trial settings of harness/raytune.py; the names of rules, backbones, tasks and attacks come from their registries.
`dag_model()` builds it, `harness schema` writes it as dags/schema.json for editors. Everything not written has
its default; an unknown key is an error that names the file, the key and the nearest valid one.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, Field, create_model, field_validator, model_validator

import rules
from harness.cost import SizeHints
from harness.overrides import assign, deep_merge, read_mapping
from harness.raytune import TrialSettings
from harness.verdicts import VerdictSettings
from workloads import backbones
from workloads.attacks import ATTACKS, GRADIENT_SOURCES, Budgets, ConvergeSettings, check_eps, get_attack
from workloads.attacks.stage import AttackSample
from workloads.config import FinetuneSettings, PretrainSettings
from workloads.datasets.options import DataOptions
from workloads.errors import ConfigError
from workloads.evaluate import EvaluateSettings
from workloads.names import STAGES
from workloads.settings import Device, Invalid, Kind, Section, Seed, one_of, validate
from workloads.tasks import TASKS, get_task

__all__ = ["STAGES", "CELL_AXES", "Dag", "DagConfig", "dag_model", "load_dag"]

CELL_AXES = ("dataset", "backbone", "task", "rule")


class DatasetEntry(DataOptions):
    sizes: SizeHints | None = None
    """Image counts for `harness plan` before the data is prepared."""
    finetune: FinetuneSettings | None = None
    """Fine-tuning settings for this dataset only (the paper: 10 epochs on ImageNet and NUS-WIDE, 20 elsewhere)."""
    tasks: TasksSection | None = None
    """Task options for this dataset only, e.g. {hashing: {topk: 1000}}: the field's mAP@k cut-off is 5000 for
    NUS-WIDE and MS-COCO, 1000 for ImageNet, the whole database for CIFAR-10."""

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str) -> str:
        """Relative to the working directory, as on the command line."""
        path = Path(root).expanduser()
        return str(path if path.is_absolute() else Path.cwd() / path)


class AttackEntry(AttackSample):
    """One attack of the grid: which one, its budgets, gradient sources, sample, parameters, and the cells it runs
    on. Built once per registered attack (`name` picks which, `params` are that attack's)."""

    name: str
    eps: Budgets  # required; its description is the type's
    sources: list[Literal[GRADIENT_SOURCES]] | None = None
    """Gradient sources of a white-box attack (default: all three); query attacks take none."""
    params: Section = Section()
    rules: list[str] | None = None
    """The rules whose models it attacks (default: all of the DAG's)."""
    tasks: list[str] | None = None
    """The tasks whose models it attacks (default: all of the DAG's it applies to)."""

    @model_validator(mode="after")
    def _sources(self) -> AttackEntry:
        spec = get_attack(self.name)
        if spec.needs_gradient_source:
            self.sources = _unique(self.sources or list(GRADIENT_SOURCES), "sources")
        elif self.sources:
            raise Invalid("sources", f"{self.name!r} queries outputs only; it takes no gradient source")
        try:
            check_eps(self.eps, spec.norm_of(self.params))
        except ConfigError as exc:
            raise Invalid("eps", f"{exc} ({self.name} measures {spec.norm_of(self.params)})") from None
        return self

    def crafting_sources(self) -> list[str | None]:
        """The gradient sources of its nodes; [None] for an attack that only queries the model."""
        return list(self.sources) if self.sources else [None]


class TasksSection(Section):
    """Task name -> its options; only the tasks written are trained."""

    def chosen(self) -> dict[str, Section]:
        return {name: opts for name in type(self).model_fields if (opts := getattr(self, name)) is not None}


def _experiment(name: str) -> str:
    if not name or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError("required: a name of letters, digits, '-', '_' or '.' (it names folders)")
    return name


class DagConfig(TrialSettings):
    """A DAG file. The axes (datasets x backbones x seeds x tasks x rules, attacks) and the settings of each stage;
    `dag_model()` fills in the registries' names."""

    experiment: Annotated[str, AfterValidator(_experiment)]
    """Required: the experiment's name in MLflow and of its folders under runs/ and results/."""
    description: str = ""
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
    attacks: list[AttackEntry] = []
    pretrain: PretrainSettings = PretrainSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    finetune_by_cell: dict[str, FinetuneSettings] = {}
    """Fine-tuning settings for some cells only, as `harness search` writes them: {"DATASET/BACKBONE/TASK/RULE":
    {lr_head: ...}}, '*' for any; the more specific pattern wins."""
    evaluate: EvaluateSettings = EvaluateSettings()
    verdicts: VerdictSettings = VerdictSettings()
    """How the report decides each cell's verdict (docs/evaluation.md)."""
    converge: ConvergeSettings | None = None
    """The convergence re-run of each classifier's survivors at the primary budget (null: none; the verdicts then
    cannot say "attack not converged" and print the check as n/a)."""

    @model_validator(mode="after")
    def _grid(self) -> DagConfig:
        _unique(self.backbones, "backbones")
        _unique(self.rules, "rules")
        tasks = list(self.task_options())
        if not tasks:
            raise Invalid("tasks", f"name at least one task: {', '.join(TASKS.names())}")
        seen = set()
        for i, a in enumerate(self.attacks):
            key = f"attacks[{i}]"
            if "transfer" in (a.sources or []) and "bp" not in self.rules:
                raise Invalid(f"{key}.sources", "'transfer' crafts on the BP-fine-tuned sibling: add bp to rules")
            a.rules = _subset(a.rules, self.rules, f"{key}.rules")
            spec = get_attack(a.name)
            fits = [t for t in tasks if get_task(t).kind in spec.tasks]
            if not fits:
                raise Invalid(f"{key}.name", f"attack {a.name!r} applies to {', '.join(spec.tasks)} models, and "
                              f"this DAG trains only {', '.join(tasks)}")
            a.tasks = _subset(a.tasks, fits, f"{key}.tasks")
            if (a.name, tuple(a.tasks)) in seen:
                raise Invalid(key, f"attack {a.name!r} is listed twice for the same tasks; merge the entries")
            seen.add((a.name, tuple(a.tasks)))
        for name, d in self.datasets.items():
            for task in d.tasks.chosen() if d.tasks is not None else {}:
                if task not in tasks:
                    raise Invalid(f"datasets.{name}.tasks.{task}", f"this DAG does not train {task!r}; it trains "
                                  f"{', '.join(tasks)}")
        known = {"dataset": list(self.datasets), "backbone": self.backbones, "task": tasks, "rule": self.rules}
        for pattern in self.finetune_by_cell:
            parts = pattern.split("/")
            if len(parts) != len(CELL_AXES):
                raise Invalid(f"finetune_by_cell.{pattern}", "expected DATASET/BACKBONE/TASK/RULE, each a name of "
                              "this DAG or '*'")
            for axis, part in zip(CELL_AXES, parts, strict=True):
                if part != "*" and part not in known[axis]:
                    raise Invalid(f"finetune_by_cell.{pattern}", f"{axis} {part!r} is not in this DAG; allowed: "
                                  f"{', '.join(map(str, known[axis]))}, *")
        return self

    def task_options(self, dataset: str | None = None) -> dict[str, dict]:
        """Task name -> its options, with a dataset's own (only the keys it writes) over the DAG's."""
        own = self.datasets[dataset].tasks if dataset is not None else None
        return {name: {**opts.model_dump(), **(own.chosen()[name].model_dump(exclude_unset=True)
                                               if own is not None and name in own.chosen() else {})}
                for name, opts in self.tasks.chosen().items()}

    def finetune_for(self, cell: dict) -> FinetuneSettings:
        """The fine-tuning settings of one cell: the DAG's, the dataset's, then the matching finetune_by_cell
        patterns from the least to the most specific (only the keys each one writes)."""
        out = self.finetune.model_dump()
        layers = [self.datasets[cell["dataset"]].finetune]
        matching = []
        for i, (pattern, value) in enumerate(self.finetune_by_cell.items()):
            parts = pattern.split("/")
            if all(p in ("*", str(cell[a])) for a, p in zip(CELL_AXES, parts, strict=True)):
                matching.append((sum(p != "*" for p in parts), i, value))
        layers += [value for _, _, value in sorted(matching, key=lambda m: m[:2])]
        for layer in layers:
            if layer is not None:
                out.update(layer.model_dump(exclude_unset=True))
        return FinetuneSettings.model_construct(**out)


def _unique(names: list, key: str) -> list:
    if len(set(names)) != len(names):
        raise Invalid(key, "a name is listed twice")
    return names


def _subset(chosen: list[str] | None, allowed: list[str], key: str) -> list[str]:
    if not chosen:
        return list(allowed)
    for name in _unique(chosen, key):
        if name not in allowed:
            raise Invalid(key, f"{name!r} is not one of this DAG's: {', '.join(allowed)}")
    return chosen


@functools.cache
def dag_model() -> type[DagConfig]:
    """DagConfig with the names and parameter models of every registered rule, backbone, task and attack."""
    entries = tuple(create_model(f"{n.capitalize()}Attack", __base__=AttackEntry, name=(Literal[n], ...),
                                 params=(get_attack(n).params, Field(default_factory=get_attack(n).params)))
                    for n in ATTACKS.in_order())
    tasks = create_model("Tasks", __base__=TasksSection,
                         **{n: (get_task(n).Options | None, None) for n in TASKS.in_order()})
    attack = Annotated[Union[entries], Field(discriminator="name"), Kind("attack", "attacks")]  # noqa: UP007
    dataset = create_model("Dataset", __base__=DatasetEntry, tasks=(tasks | None, None))
    return create_model(
        "Dag", __base__=DagConfig,
        datasets=(Annotated[dict[str, dataset], Field(min_length=1)], ...),
        backbones=(list[one_of(backbones.available_backbones())], ["resnet18"]),
        rules=(list[one_of(rules.available_rules())], ["bp", "usf", "frsf", "brsf"]),
        tasks=(tasks, Field(default_factory=lambda: tasks(classification={}))),
        attacks=(list[attack], []),
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
    in order, then the `--set` values."""
    where = str(path)
    tree = read_mapping(path, "DAG file")
    for file in files or []:
        tree = deep_merge(tree, read_mapping(file, "override file"))
    if files:
        where = f"{where} (with {', '.join(map(str, files))})"
    return Dag(str(path), validate(dag_model(), assign(tree, sets or [], where), where))
