"""Score-based black-box attacks: they query output scores only, so the gradient source does not apply."""

from __future__ import annotations

import torchattacks

from workloads.attacks.base import AttackContext, AttackSpec, Steps
from workloads.attacks.registry import register_attack
from workloads.names import Passes
from workloads.settings import Section


class SquareParams(Section):
    queries: Steps = 5000
    """Queries per image (torchattacks' default)."""
    restarts: Steps = 1
    """Random restarts."""


def _square(model, eps: float, params: SquareParams, ctx: AttackContext):
    return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=params.queries, n_restarts=params.restarts,
                               seed=ctx.seed)


register_attack(AttackSpec("square", "score", ("classification",), _square, SquareParams,
                           "Square attack (Andriushchenko et al. 2020), random search on output margins",
                           cost=lambda p: p.queries * p.restarts * Passes.FORWARD))
