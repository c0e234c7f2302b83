from __future__ import annotations

import torch

from rules.base import Feedback, Layer, Rule, xavier_bound
from rules.registry import register_rule
from rules.streams import UniformStream


@register_rule
class BRSF(Rule):
    """Batch-random-magnitude sign-concordant feedback: B = |M_t| * sign(W), M_t Xavier-uniform redrawn every pass.

    A fresh M_t is drawn for every backward pass through the layer, i.e. once per forward/backward pair: each training
    batch, and (as in BioTorch) each step of an attack that differentiates the model through its own backward.
    Magnitudes are drawn at 16-bit resolution on the CPU (see rules/streams.py). A zero weight sends no error
    back (sign(0) = 0).
    """

    name = "brsf"
    random_per_pass = True

    def init_layer(self, layer: Layer, generator: torch.Generator) -> None:
        layer.state["bound"] = torch.tensor(xavier_bound(layer.weight))

    def feedback(self, layer: Layer, stream: UniformStream | None = None) -> Feedback:
        if stream is None:
            raise TypeError("brsf draws its feedback magnitudes from the handle's UniformStream")
        w = layer.weight
        sign = layer.per_weight("sign", lambda w, out: torch.sign(w, out=out))
        # matrix = U' * sign(W) with U' = U / unit; B = a * unit * matrix = a * U * sign(W).
        matrix = stream.fill_scaled_(layer.scratch("b", w), sign)
        return Feedback(matrix, float(layer.state["bound"]) * stream.unit(w.device))
