"""White-box attacks on classifiers from torchattacks (L-inf, [0, 1] pixels; normalisation lives in the model).

Whatever backward the crafting model defines is what these attacks differentiate: the gradient source
(rule / exact / transfer) is chosen by the caller, not here.
"""

from __future__ import annotations

import torchattacks

from workloads.attacks.base import AttackContext, AttackSpec
from workloads.attacks.registry import register_attack


def _fgsm(model, eps: float, params: dict, ctx: AttackContext):
    return torchattacks.FGSM(model, eps=eps)


def _pgd(model, eps: float, params: dict, ctx: AttackContext):
    steps = int(params["steps"])
    # PROTOCOL.md section 4: step 2.5 * eps / steps, random start (Madry et al.'s convention)
    alpha = float(params["alpha_factor"]) * eps / max(steps, 1)
    return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=bool(params["random_start"]))


def _apgd(model, eps: float, params: dict, ctx: AttackContext):
    return torchattacks.APGD(model, norm="Linf", eps=eps, steps=int(params["steps"]),
                             n_restarts=int(params["restarts"]), loss=params["loss"], seed=ctx.seed)


def _autoattack(model, eps: float, params: dict, ctx: AttackContext):
    return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=params["version"],
                                   n_classes=ctx.task.num_classes, seed=ctx.seed)


register_attack(AttackSpec("fgsm", "gradient", ("classification",), _fgsm, {}, "fast gradient sign, one step"))
register_attack(AttackSpec("pgd", "gradient", ("classification",), _pgd,
                           {"steps": 5, "alpha_factor": 2.5, "random_start": True},
                           "projected gradient descent, L-inf, random start"))
register_attack(AttackSpec("apgd", "gradient", ("classification",), _apgd,
                           {"steps": 100, "restarts": 1, "loss": "ce"},
                           "auto-PGD (Croce & Hein 2020), step size adapted, no tuning", {"loss": ("ce", "dlr")}))
register_attack(AttackSpec("autoattack", "gradient", ("classification",), _autoattack, {"version": "standard"},
                           "AutoAttack ensemble: APGD-CE, APGD-T, FAB-T, Square; standard for obfuscated gradients",
                           {"version": ("standard", "plus", "rand")}))
