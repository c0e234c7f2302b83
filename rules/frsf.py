from __future__ import annotations

import torch

from rules.base import Feedback, Layer, Rule, xavier_bound
from rules.kernels import resign_
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

    def feedback(self, layer: Layer, stream: object | None = None) -> Feedback:
        abs_m = layer.state_on("abs_m", layer.weight)
        # After an optimizer step only the entries whose weight changed sign are rewritten (rules/kernels.py).
        return Feedback(layer.per_weight(
            "b", lambda w, out: torch.sign(w, out=out).mul_(abs_m), lambda w, out: resign_(out, w, abs_m)
        ))

