"""The contract every learning rule fulfils, and the per-layer state it works on.

A rule only says what the feedback matrix B of a layer is. Everything else (which layers, how the error is sent
down with B, exact weight gradients, checkpoints) is shared machinery in `rules.handle`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from rules.kernels import new_sign_record, resign_, resign_usable, sign_codes

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


def _stamp(w: torch.Tensor) -> tuple:
    """What identifies W's values for the caches in `Layer.derived`: an optimizer step bumps its version counter."""
    return (w._version, w.data_ptr(), w.dtype, w.device, w.shape, w.stride())


@dataclass
class Layer:
    """One Conv/Linear module under a rule: its name, the module, and the rule's tensors for it."""

    name: str
    module: nn.Module
    # What the rule draws or sets at attach (fixed random matrices, scales): saved with the checkpoint.
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    # Tensors derived from W, rebuilt only when W changes in place (an optimizer step bumps its version counter),
    # so an attack's many steps on fixed weights build them once: key -> (stamp, tensor, ...). Never saved.
    derived: dict[str, tuple] = field(default_factory=dict)
    # The B sent down by the most recent backward (what diagnostics must be computed from).
    last_b: torch.Tensor | None = None

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

    def sign_feedback(self, mag: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        """B = mag * sign(W) (or scale * sign(W)) in a persistent buffer, brought up to date only when W changed.

        After an optimizer step only the entries whose sign flipped are rewritten, found by comparing W with a
        two-bit record of sign(W) (rules/feedback_kernels.c): that reads W once (the layer's forward has just read
        it, so partly from cache) and 1/16 of B's bytes. The buffers are reused rather than reallocated: on the CPU
        a fresh weight-sized tensor per step costs page faults that dwarf the arithmetic.
        """
        w = self.weight
        stamp = _stamp(w)
        hit = self.derived.get("sign")
        if hit is not None and hit[0] == stamp:
            return hit[1]
        # W's own layout (channels-last on GPUs), so any view autograd saved of W maps onto the same view of B.
        reusable = hit is not None and hit[0][2:] == stamp[2:]
        b, record = (hit[1], hit[2]) if reusable else (torch.empty_like(w), None)
        wd = w.detach()
        if record is None and resign_usable(b, wd, mag):
            record = new_sign_record(b.numel())
        with torch.no_grad():
            if record is None or not resign_(b, record, wd, mag, scale):
                record = None
                torch.sign(wd, out=b).mul_(mag if mag is not None else scale)
        self.derived["sign"] = (stamp, b, record)
        return b

    def fixed_sign_codes(self) -> torch.Tensor | None:
        """sign(W) as int8 once two passes in a row found W unchanged (an attack's steps), else None.

        For brsf's draw, which otherwise reads all of W at every pass. Made at the second pass on the same W, so a
        training step, which meets a new W at every pass, never pays for it.
        """
        stamp = _stamp(self.weight)
        hit = self.derived.get("codes")
        if hit is None or hit[0] != stamp:
            self.derived["codes"] = (stamp, None)
            return None
        if hit[1] is None:
            self.derived["codes"] = (stamp, sign_codes(self.weight.detach()))
        return self.derived["codes"][1]

    def scratch(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """A persistent buffer shaped and laid out like `like`, reused across steps (no allocation on the hot path)."""
        stamp = ("scratch", like.dtype, like.device, like.shape, like.stride())
        hit = self.derived.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        buf = torch.empty_like(like)
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

    def feedback(self, layer: Layer, stream: UniformStream | None = None) -> torch.Tensor:
        """B for `layer` (shaped like its weight, on its device and dtype). Callers must not modify it."""
        raise NotImplementedError
