from __future__ import annotations

import torch

from rules.base import Layer, Rule, xavier_bound
from rules.registry import register_rule


@register_rule
class FRSF(Rule):
    """Fixed random-magnitude sign-concordant feedback: B = |M| * sign(W), M Xavier-uniform drawn once at attach.

    B changes only when the sign of a weight changes; a zero weight sends no error back (sign(0) = 0).
    """

    name = "frsf"

    def init_layer(self, layer: Layer, generator: torch.Generator) -> None:
        w = layer.weight
        a = xavier_bound(w)
        # Only |M| is ever used, so only |M| is kept (and saved with the checkpoint).
        layer.state["abs_m"] = torch.empty(w.shape, dtype=torch.float32).uniform_(-a, a, generator=generator).abs_()

    def feedback(self, layer: Layer, stream: object | None = None) -> torch.Tensor:
        return layer.sign_feedback(mag=layer.state_on("abs_m", layer.weight))

