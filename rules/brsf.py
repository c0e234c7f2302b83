from __future__ import annotations

import torch

from rules.base import Layer, Rule, xavier_bound
from rules.registry import register_rule
from rules.streams import UniformStream


@register_rule
class BRSF(Rule):
    """Batch-random-magnitude sign-concordant feedback: B = |M_t| * sign(W), M_t Xavier-uniform redrawn every pass.

    A fresh M_t is drawn for every backward pass through the layer, i.e. once per forward/backward pair: each training
    batch, and (as in BioTorch) each step of an attack that differentiates the model through its own backward.
    Magnitudes are drawn at 16-bit resolution by a counter-based stream that gives the same numbers on CPU and GPU
    (see rules/streams.py). A zero weight sends no error back (sign(0) = 0).
    """

    name = "brsf"
    random_per_pass = True

    def init_layer(self, layer: Layer, generator: torch.Generator) -> None:
        layer.state["bound"] = torch.tensor(xavier_bound(layer.weight))

    def feedback(self, layer: Layer, stream: UniformStream | None = None) -> torch.Tensor:
        if stream is None:
            raise TypeError("brsf draws its feedback magnitudes from the handle's UniformStream")
        w = layer.weight.detach()
        # B = (a / 65536) * k * sign(W) = |M_t| * sign(W), k odd in [1, 65535]: one pass that reads W (or, while W
        # stays fixed, its 1-byte sign codes) and writes B.
        scale = float(layer.state["bound"]) * stream.unit_scale
        return stream.fill_signed_(layer.scratch("b", w), w, scale=scale, codes=layer.fixed_sign_codes())
