from __future__ import annotations

import torch

from rules.base import Layer, Rule, xavier_bound
from rules.registry import register_rule


@register_rule
class FA(Rule):
    """Feedback alignment: B is a fixed Xavier-uniform matrix drawn at attach, independent of W."""

    name = "fa"

    def init_layer(self, layer: Layer, generator: torch.Generator) -> None:
        w = layer.weight
        a = xavier_bound(w)
        layer.state["m"] = torch.empty(w.shape, dtype=torch.float32).uniform_(-a, a, generator=generator)

    def feedback(self, layer: Layer, stream: object | None = None) -> torch.Tensor:
        return layer.state_on("m", layer.weight)
