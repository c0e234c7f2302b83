"""The contract every learning rule fulfils, and the per-layer state it works on.

A rule only says what the feedback matrix B of a layer is. Everything else (which layers, how the error is sent
down with B, exact weight gradients, checkpoints) is shared machinery in `rules.handle`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from torch import nn

if TYPE_CHECKING:
    from rules.streams import UniformStream

FEEDBACK_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """Fan-in and fan-out of a Linear or Conv weight, as `torch.nn.init` (and so BioTorch) counts them."""
    return nn.init._calculate_fan_in_and_fan_out(weight)


def xavier_std(weight: torch.Tensor) -> float:
    fan_in, fan_out = fans(weight)
    return math.sqrt(2.0 / (fan_in + fan_out))


def xavier_bound(weight: torch.Tensor) -> float:
    """Half-width a of Xavier-uniform U(-a, a) (gain 1)."""
    fan_in, fan_out = fans(weight)
    return math.sqrt(6.0 / (fan_in + fan_out))


class Feedback(NamedTuple):
    """B = scale * matrix. Keeping a scalar factor apart lets the backward apply it to whichever of B and the error
    sent down is smaller (on the CPU: always the error, in place, so no weight-sized temporary is allocated)."""

    matrix: torch.Tensor
    scale: float = 1.0

    def materialize(self) -> torch.Tensor:
        return self.matrix * self.scale if self.scale != 1.0 else self.matrix


@dataclass
class Layer:
    """One Conv/Linear module under a rule: its name, the module, and the rule's tensors for it."""

    name: str
    module: nn.Module
    # What the rule draws or sets at attach (fixed random matrices, scales): saved with the checkpoint.
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    # Tensors derived from W, rebuilt only when W changes in place (an optimizer step bumps its version counter),
    # so an attack's many steps on fixed weights build them once. Never saved.
    derived: dict[str, tuple[tuple, torch.Tensor]] = field(default_factory=dict)
    # The B sent down by the most recent backward (what diagnostics must be computed from).
    last_b: Feedback | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def state_on(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """The rule tensor `key`, moved once to the device and dtype of `like` (the model may move after attach)."""
        t = self.state[key]
        if t.device != like.device or t.dtype != like.dtype:
            t = t.to(device=like.device, dtype=like.dtype)
            self.state[key] = t
        return t

    def per_weight(
        self, key: str, fill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        update: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
    ) -> torch.Tensor:
        """`fill(W, out)` into a persistent buffer shaped like W, redone only when W is modified or replaced.

        When W changed in place and `update(W, out)` is given, it may bring the previous value up to date more
        cheaply (returning True) instead of a full `fill`. The buffer is reused rather than reallocated: on the CPU
        a fresh weight-sized tensor per step costs page faults that dwarf the arithmetic (torch.sign of 11.2M
        floats: 62 ms allocating, 2 ms into a buffer).
        """
        w = self.weight
        stamp = (w._version, w.data_ptr(), w.dtype, w.device, w.shape)
        hit = self.derived.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        reusable = hit is not None and hit[1].shape == w.shape and hit[1].dtype == w.dtype and hit[1].device == w.device
        buf = hit[1] if reusable else torch.empty_like(w, memory_format=torch.contiguous_format)
        with torch.no_grad():
            if not (reusable and update is not None and update(w.detach(), buf)):
                fill(w.detach(), buf)
        self.derived[key] = (stamp, buf)
        return buf

    def scratch(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """A persistent buffer shaped like `like`, reused across steps (no allocation on the hot path)."""
        stamp = ("scratch", like.dtype, like.device, like.shape)
        hit = self.derived.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        buf = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        self.derived[key] = (stamp, buf)
        return buf

    def clear_derived(self) -> None:
        self.derived.clear()
        self.last_b = None


class Rule:
    """A learning rule: how the feedback matrix B of a layer is made.

    Subclasses set `name` and implement `feedback`, which is called once per backward pass through the layer.
    `exact = True` means B = W and no hook is installed at all; `random_per_pass = True` means every call draws.
    """

    name: ClassVar[str]
    exact: ClassVar[bool] = False
    # B is a fresh random draw at every backward pass (brsf), not a function of the current weights.
    random_per_pass: ClassVar[bool] = False

    def init_layer(self, layer: Layer, generator: torch.Generator) -> None:
        """Draw the layer's fixed random tensors (if any) into `layer.state`, on the CPU for reproducibility."""

    def feedback(self, layer: Layer, stream: UniformStream | None = None) -> Feedback:
        """B for `layer` (shaped like its weight, on its device and dtype). Callers must not modify the matrix."""
        raise NotImplementedError
