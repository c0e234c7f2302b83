from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from workloads.errors import DataError
from workloads.names import Metric
from workloads.tasks.base import Task
from workloads.tasks.registry import register_task


@register_task
class Classification(Task):
    """A new num_classes-way head, cross-entropy, top-1 accuracy (single-label data)."""

    name = "classification"
    kind = "classification"
    metric, metric_label, attack_metric = Metric.TOP1, "top-1", Metric.ROBUST_ACC

    def __init__(self, num_classes: int, label_kind: str = "single", **options) -> None:
        if label_kind != "single":
            raise DataError("the classification task needs single-label data; use the hashing task for multi-label")
        super().__init__(num_classes, label_kind)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, labels)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: Iterable, database: Iterable | None = None) -> dict:
        correct = total = 0
        loss = 0.0
        for x, y in batches:
            out = model(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
        return {Metric.TOP1: correct / max(total, 1), Metric.LOSS: loss / max(total, 1), Metric.N: total}
