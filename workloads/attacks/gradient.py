"""White-box attacks on classifiers from torchattacks (L-inf, [0, 1] pixels; normalisation lives in the model).

Whatever backward the crafting model defines is what these attacks differentiate: the gradient source
(rule / exact / transfer) is chosen by the caller, not here.
"""

from __future__ import annotations

from typing import Literal

import torchattacks

from workloads.attacks.base import AttackContext, AttackSpec, Steps, gradient_cost, restarted
from workloads.attacks.registry import register_attack
from workloads.settings import Section


def _fgsm(model, eps: float, params: Section, ctx: AttackContext):
    return torchattacks.FGSM(model, eps=eps)


class PGDParams(Section):
    steps: Steps = 5
    """Iterations (the paper's headline setting: 5; a strong evaluation uses 50 or more)."""
    restarts: Steps = 1
    """Runs from fresh random starts, each on the images the runs before left unbroken."""
    alpha_factor: float = 2.5
    """Step size as a multiple of eps / steps (2.5: Madry et al.'s convention)."""
    random_start: bool = True
    """Start from a uniform point in the eps ball."""


def _pgd(model, eps: float, params: PGDParams, ctx: AttackContext):
    alpha = params.alpha_factor * eps / max(params.steps, 1)
    pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=params.steps, random_start=params.random_start)
    return restarted(pgd, model, params.restarts)


class APGDRun(Section):
    steps: Steps = 100
    """Iterations."""
    restarts: Steps = 1
    """Random restarts; an image counts as broken if any restart breaks it."""


class APGDParams(APGDRun):
    loss: Literal["ce", "dlr"] = "ce"
    """Cross-entropy, or the difference-of-logits ratio (scale-invariant; does not saturate)."""


def _apgd_with(loss: str, model, eps: float, params: APGDRun, ctx: AttackContext):
    return torchattacks.APGD(model, norm="Linf", eps=eps, steps=params.steps, n_restarts=params.restarts, loss=loss,
                             seed=ctx.seed)


def _apgd(model, eps: float, params: APGDParams, ctx: AttackContext):
    return _apgd_with(params.loss, model, eps, params, ctx)


def _apgd_dlr(model, eps: float, params: APGDRun, ctx: AttackContext):
    return _apgd_with("dlr", model, eps, params, ctx)


class AutoAttackParams(Section):
    version: Literal["standard", "plus", "rand"] = "standard"
    """AutoAttack's attack set: standard (APGD-CE, APGD-T, FAB-T, Square), plus, or rand (randomised defences)."""


def _autoattack(model, eps: float, params: AutoAttackParams, ctx: AttackContext):
    return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=params.version,
                                   n_classes=ctx.task.num_classes, seed=ctx.seed)


register_attack(AttackSpec("fgsm", "gradient", ("classification",), _fgsm, description="fast gradient sign, one step",
                           single_step=True, cost=lambda p: gradient_cost(1)))
register_attack(AttackSpec("pgd", "gradient", ("classification",), _pgd, PGDParams,
                           "projected gradient descent, L-inf, random start",
                           cost=lambda p: gradient_cost(p.steps, p.restarts)))
register_attack(AttackSpec("apgd", "gradient", ("classification",), _apgd, APGDParams,
                           "auto-PGD (Croce & Hein 2020), step size adapted, no tuning",
                           cost=lambda p: gradient_cost(p.steps, p.restarts)))
# AutoAttack's first two attacks side by side in one grid: APGD-DLR is a name of its own, so its rows never mix
register_attack(AttackSpec("apgd-dlr", "gradient", ("classification",), _apgd_dlr, APGDRun,
                           "auto-PGD with the difference-of-logits-ratio loss (AutoAttack's APGD-DLR)",
                           cost=lambda p: gradient_cost(p.steps, p.restarts)))
# AutoAttack stops each of its attacks on the images already broken: about 100 gradient steps is its usual bill
register_attack(AttackSpec("autoattack", "gradient", ("classification",), _autoattack, AutoAttackParams,
                           "AutoAttack ensemble: APGD-CE, APGD-T, FAB-T, Square; standard for obfuscated gradients",
                           cost=lambda p: gradient_cost(100)))
