from __future__ import annotations

from rules.base import Feedback, Layer, Rule
from rules.registry import register_rule


@register_rule
class BP(Rule):
    """Backpropagation: B = W, plain autograd (no hook is installed, so gradients are bit-identical)."""

    name = "bp"
    exact = True

    def feedback(self, layer: Layer, stream: object | None = None) -> Feedback:
        return Feedback(layer.weight.detach())
