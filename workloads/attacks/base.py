"""The attack contract: what an attack needs, which tasks it fits, and how it crafts adversarial examples.

An attack is crafted against a *crafting model* and scored on the *target model*. The gradient source decides
the crafting model (PROTOCOL.md section 4):
- `rule`: the target as trained, differentiated through its rule's backward (the paper's protocol);
- `exact`: the same weights with exact autograd (`handle.exact()`): the honest white-box number;
- `transfer`: the BP-fine-tuned sibling (same backbone, data, seed); the examples are then scored on the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

GRADIENT_SOURCES = ("rule", "exact", "transfer")


@dataclass(frozen=True)
class AttackSpec:
    name: str
    family: str  # "gradient" (needs a gradient source), "decision" (queries outputs only), "hashing"
    tasks: tuple[str, ...]  # task kinds it applies to
    # (model, eps, params) -> craft(x, y) -> x_adv, everything in [0, 1] pixels
    build: Callable[[torch.nn.Module, float, dict], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    defaults: dict = field(default_factory=dict)
    description: str = ""

    @property
    def needs_gradient_source(self) -> bool:
        return self.family in ("gradient", "hashing")


def check_eps(eps_grid: list[float]) -> list[float]:
    out = []
    for e in eps_grid:
        e = float(e)
        if not 0.0 <= e <= 1.0:
            raise ValueError(f"eps {e} is outside [0, 1]: budgets are L-inf distances in [0, 1] pixel space")
        out.append(e)
    return out
