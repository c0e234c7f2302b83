from __future__ import annotations

import torch

from rules.base import Layer, Rule
from rules.registry import register_rule


@register_rule
class BP(Rule):
    """Backpropagation: B = W, plain autograd (no hook is installed, so gradients are bit-identical)."""

    name = "bp"
    exact = True

    def feedback(self, layer: Layer, stream: object | None = None) -> torch.Tensor:
        return layer.weight.detach()
