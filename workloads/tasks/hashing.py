"""Deep hashing: a K-bit tanh(alpha * y) head, trained with CSQ (default) or DPSH; codes = sign; mAP@k.

CSQ (Yuan et al., CVPR 2020, as in DeepHash-pytorch): each class gets a hash centre, a row of a Hadamard matrix
(or a random +-1 vector when there are more classes than 2K); a multi-label sample's centre is the sign of the sum
of its classes' centres. Loss: binary cross-entropy between (u + 1) / 2 and (centre + 1) / 2, plus
lambda * mean((|u| - 1)^2). DPSH (Li et al., IJCAI 2016) is computed over the pairs inside each batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from workloads.names import Metric
from workloads.settings import Limit, Section
from workloads.tasks.base import Task
from workloads.tasks.metrics import map_at_k
from workloads.tasks.registry import register_task


def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hash_centers(num_classes: int, bits: int, seed: int = 0, tries: int = 20) -> torch.Tensor:
    """CSQ's hash centres, as DeepHash-pytorch builds them: the rows of [H; -H] (H the bits x bits Hadamard matrix,
    when bits is a power of two) for the first 2 * bits classes; beyond those, balanced random centres (exactly half
    the bits -1), redrawn (up to `tries` times, seeded) until every pair of centres is more than bits / 4 apart and
    the mean pairwise distance is at least bits / 2. The last draw is kept if none passes (few bits, many classes)."""
    power_of_two = bits & (bits - 1) == 0
    fixed = torch.cat([hadamard(bits), -hadamard(bits)])[:num_classes] if power_of_two else torch.empty(0, bits)
    extra = num_classes - len(fixed)
    if extra <= 0:
        return fixed
    g = torch.Generator().manual_seed(seed)
    for _ in range(tries):
        signs = torch.ones(extra, bits)
        for row in signs:
            row[torch.randperm(bits, generator=g)[: bits // 2]] = -1.0
        centres = torch.cat([fixed, signs])
        distances = torch.cdist(centres, centres, p=1)[torch.triu_indices(num_classes, num_classes, 1).unbind()] / 2
        if distances.min() > bits / 4 and distances.mean() >= bits / 2:
            break
    return centres


@register_task
class Hashing(Task):
    """K-bit codes for retrieval: tanh(alpha * y) head, CSQ or DPSH loss, mAP@k with shared-label relevance."""

    name = "hashing"
    kind = "hashing"
    metric, metric_label, attack_metric = Metric.MAP, "mAP", Metric.MAP

    class Options(Section):
        bits: Annotated[int, Field(ge=2, le=4096)] = 32
        """Code length K."""
        loss: Literal["csq", "dpsh"] = "csq"
        """Training loss: CSQ (hash centres, pointwise) or DPSH (pairwise likelihood within a batch)."""
        topk: Limit = None
        """Ranked database items mAP counts (null: all; 5000 is usual for NUS-WIDE and COCO, 1000 for ImageNet)."""

    def __init__(self, num_classes: int, label_kind: str = "single", bits: int = 32, loss: str = "csq",
                 alpha: float = 1.0, quantization: float = 1e-4, topk: int | None = None, seed: int = 0) -> None:
        super().__init__(num_classes, label_kind)
        self.bits, self.loss_name, self.alpha, self.quantization, self.topk = bits, loss, alpha, quantization, topk
        self.centers = hash_centers(num_classes, bits, seed)

    @property
    def num_outputs(self) -> int:
        return self.bits

    def codes_from_outputs(self, outputs: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        return torch.tanh((self.alpha if alpha is None else alpha) * outputs)

    def _hot(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() == 1:
            return F.one_hot(labels, self.num_classes).float()
        return labels.float()

    def target_centers(self, labels: torch.Tensor) -> torch.Tensor:
        centers = self.centers.to(labels.device)
        if labels.dim() == 1:
            return centers[labels]
        summed = self._hot(labels) @ centers
        # ties (sum 0) broken towards +1, deterministically
        return torch.where(summed >= 0, 1.0, -1.0)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        u = self.codes_from_outputs(outputs)
        if self.loss_name == "csq":
            target = (self.target_centers(labels) + 1) / 2
            center = F.binary_cross_entropy((u + 1).clamp(1e-6, 2 - 1e-6) / 2, target)
            return center + self.quantization * ((u.abs() - 1) ** 2).mean()
        hot = self._hot(labels)
        s = (hot @ hot.t() > 0).float()
        theta = 0.5 * (u @ u.t())
        likelihood = (F.softplus(theta) - s * theta).mean()
        return likelihood + 0.1 * ((u - u.sign()) ** 2).mean()

    @staticmethod
    @torch.no_grad()
    def codes(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Binary codes in {-1, +1} of a batch, on the CPU (where retrieval is ranked)."""
        return torch.where(model(x.to(next(model.parameters()).device)) >= 0, 1.0, -1.0).cpu()

    def encode(self, model: torch.nn.Module, batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, labels) of every batch."""
        pairs = [(self.codes(model, x), y.cpu()) for x, y in batches]
        return torch.cat([c for c, _ in pairs]), torch.cat([y for _, y in pairs])

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: Iterable, database: Iterable | None = None) -> dict:
        if database is None:
            raise ValueError("the hashing task needs a database split to rank against")
        q_codes, q_labels = self.encode(model, batches)
        db_codes, db_labels = self.encode(model, database)
        m = map_at_k(q_codes, db_codes, q_labels, db_labels, self.topk)
        return {Metric.MAP: m, "topk": self.topk or len(db_codes), "n_query": len(q_codes), "n_db": len(db_codes),
                "bits": self.bits}

    def state_dict(self) -> dict:
        return {"centers": self.centers.clone()}

    def load_state_dict(self, state: dict) -> None:
        if "centers" in state:
            self.centers = state["centers"].clone()
