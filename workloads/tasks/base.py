"""The task contract: its options, how many outputs the head has, the training loss, and how a model is scored."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from workloads.settings import Section


class Task:
    name: ClassVar[str]
    # "classification" attacks use cross-entropy; hashing attacks (HAG, SDHA) use codes.
    kind: ClassVar[str]
    # the key of `evaluate`'s result that ranks models (higher is better): what validation and search optimise;
    # one of workloads.names.Metric
    metric: ClassVar[str]
    # how the report heads that metric, and the metric an attack's rows carry per eps for this task
    metric_label: ClassVar[str]
    attack_metric: ClassVar[str]
    # the task's options in a DAG (`tasks: {NAME: {...}}`) or a stage config (`task: {name: NAME, ...}`)
    Options: ClassVar[type[Section]] = Section
    # Options plus `name`: the `task` section of a stage config (made by `register_task`)
    Config: ClassVar[type[Section]]

    def __init__(self, num_classes: int, label_kind: str = "single", **options: Any) -> None:
        self.num_classes = num_classes
        self.label_kind = label_kind

    @property
    def num_outputs(self) -> int:
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: Iterable, database: Iterable | None = None) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
