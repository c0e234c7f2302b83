from __future__ import annotations

import torch

from rules.base import Layer, Rule, xavier_std
from rules.registry import register_rule


@register_rule
class USF(Rule):
    """Uniform sign-concordant feedback: B = s * sign(W), s = sqrt(2 / (fan_in + fan_out)) (the Xavier std).

    B follows W at every forward; it is rebuilt only when W has changed. A zero weight has sign 0 (torch's
    convention), so it sends no error back through that connection.
    """

    name = "usf"

    def init_layer(self, layer: Layer, generator: torch.Generator) -> None:
        layer.state["scale"] = torch.tensor(xavier_std(layer.weight))

    def feedback(self, layer: Layer, stream: object | None = None) -> torch.Tensor:
        return layer.sign_feedback(scale=float(layer.state["scale"]))
