"""Score-based black-box attacks: they query output scores only, so the gradient source does not apply."""

from __future__ import annotations

import torchattacks

from workloads.attacks.base import AttackContext, AttackSpec
from workloads.attacks.registry import register_attack


def _square(model, eps: float, params: dict, ctx: AttackContext):
    return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=int(params["queries"]),
                               n_restarts=int(params["restarts"]), seed=ctx.seed)


register_attack(AttackSpec("square", "score", ("classification",), _square, {"queries": 5000, "restarts": 1},
                           "Square attack (Andriushchenko et al. 2020), random search on output margins"))
