"""Minimal-perturbation white-box attacks: the smallest L-inf perturbation that breaks each image (its radius).

A fixed-budget attack says, at each eps of the grid, whether an image broke; a minimal one searches, per image, for
the smallest distance at which it breaks. Its radii give the whole robustness curve at once (the share of images
whose radius exceeds eps), and a per-image number two models can be compared on (docs/evaluation.md, "Radii").

`fmn` is Fast Minimum-Norm (Pintor et al. 2021) from foolbox 3: a gradient step on the logit margin, then a
projection onto an L-inf ball whose radius shrinks while the point is adversarial and grows while it is not. One
input gradient per step, through whatever backward the crafting model defines (the gradient source). The adapter
attacks only the images the model classifies correctly (the others have radius 0) and returns, with each
adversarial, whether it was found.
"""

from __future__ import annotations

import foolbox as fb
import torch

from workloads.attacks.base import AttackContext, AttackSpec, Steps, gradient_cost
from workloads.attacks.registry import register_attack
from workloads.settings import Section


class FMNParams(Section):
    steps: Steps = 100
    """Iterations (Pintor et al.: 100 to 1,000; the radius only shrinks with more)."""
    max_stepsize: float = 1.0
    """Initial step size, annealed (cosine) down over the steps."""
    gamma: float = 0.05
    """How fast the ball's radius shrinks or grows per step."""


def foolbox_model(module: torch.nn.Module, model: torch.nn.Module) -> fb.PyTorchModel:
    """`module` (`model` or a wrapper of it) as foolbox takes it, on `model`'s device: foolbox otherwise moves it to
    cuda:0 whenever a GPU exists, wherever the caller put it."""
    return fb.PyTorchModel(module.eval(), bounds=(0.0, 1.0), device=next(model.parameters()).device)


def unsearched(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a minimal attack returns before it searches (the clean images, nothing found), and the images it
    searches: those the model classifies correctly (the others are broken at radius 0)."""
    with torch.no_grad():
        todo = (model(x).argmax(1) == y).nonzero().flatten()
    return x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device), todo


def _fmn(model: torch.nn.Module, eps: float | None, params: FMNParams, ctx: AttackContext):
    fmodel = foolbox_model(model, model)
    attack = fb.attacks.LInfFMNAttack(steps=params.steps, max_stepsize=params.max_stepsize, gamma=params.gamma)

    def craft(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv, found, todo = unsearched(model, x, y)
        if len(todo) == 0:
            return x_adv, found
        advs = attack.run(fmodel, x[todo], fb.criteria.Misclassification(y[todo])).detach()
        with torch.no_grad():
            found[todo] = model(advs).argmax(1) != y[todo]
        x_adv[todo] = advs
        return x_adv, found

    return craft


register_attack(AttackSpec("fmn", "gradient", ("classification",), _fmn, FMNParams,
                           "Fast Minimum-Norm (Pintor et al. 2021), L-inf: each image's smallest breaking radius",
                           minimal=True, cost=lambda p: gradient_cost(p.steps)))
