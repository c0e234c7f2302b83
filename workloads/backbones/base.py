"""What every backbone provides: a torchvision body, where its head is, and what input it needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std inside the model, so inputs and every attack budget live in [0, 1] pixel space."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Network(nn.Module):
    """normalize -> body (a torchvision model whose last Linear is the task's head)."""

    def __init__(self, body: nn.Module, head_path: str, normalize: Normalize | None = None) -> None:
        super().__init__()
        self.normalize = normalize or Normalize()
        self.body = body
        self.head_path = head_path

    @property
    def head(self) -> nn.Linear:
        return self.body.get_submodule(self.head_path)

    def replace_head(self, out_features: int) -> nn.Linear:
        parent_path, _, leaf = self.head_path.rpartition(".")
        parent = self.body.get_submodule(parent_path) if parent_path else self.body
        old = self.head
        new = nn.Linear(old.in_features, out_features)
        setattr(parent, leaf, new)
        return new

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    factory: Callable[[int], nn.Module]  # num_classes -> torchvision model, random init
    head_path: str  # dotted path of the final Linear
    min_size: int  # smallest input side the architecture accepts
    imagenet_weights: str  # torchvision weights enum name, for the offline hub cache
    note: str = ""
