"""FGSM and PGD from torchattacks (L-inf, [0, 1] pixels; normalisation lives inside the model)."""

from __future__ import annotations

import torchattacks

from workloads.attacks.base import AttackSpec
from workloads.attacks.registry import register_attack


def _fgsm(model, eps: float, params: dict):
    return torchattacks.FGSM(model, eps=eps)


def _pgd(model, eps: float, params: dict):
    steps = int(params.get("steps", 5))
    # PROTOCOL.md section 4: step 2.5 * eps / steps, random start (Madry et al.'s convention)
    alpha = float(params.get("alpha_factor", 2.5)) * eps / max(steps, 1)
    start = bool(params.get("random_start", True))
    return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=start)


register_attack(AttackSpec("fgsm", "gradient", ("classification",), _fgsm, {}, "fast gradient sign, one step"))
register_attack(AttackSpec("pgd", "gradient", ("classification",), _pgd, {"steps": 5, "alpha_factor": 2.5,
                                                                           "random_start": True},
                           "projected gradient descent, L-inf, random start"))
