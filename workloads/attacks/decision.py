"""Decision-based black-box attacks from foolbox 3 (Boundary, HopSkipJump) behind one adapter.

They see the predicted label only and shrink a perturbation that is already adversarial, so one run yields the
smallest adversarial found per image; the caller turns that into an eps curve. The adapter
- attacks only images the model classifies correctly (the others are not robust at any eps);
- runs foolbox's own starting-point search first and attacks only the images it found a start for: foolbox raises
  for the whole batch when one image has no start, and such an image is robust as far as this attack can tell;
- counts the start search's queries apart from the attack's own, per image it attacked: Boundary stops once every
  image's steps have shrunk, so how much of its budget it spent on a model is worth comparing with the baseline's;
- never differentiates the model: inputs carry no grad and the forward runs under `torch.no_grad`.
"""

from __future__ import annotations

import warnings
from typing import Literal

import foolbox as fb
import torch

from workloads.attacks.base import AttackContext, AttackSpec, Steps
from workloads.attacks.minimal import foolbox_model, unsearched
from workloads.attacks.registry import register_attack
from workloads.names import Passes
from workloads.settings import Section


class _LabelsOnly(torch.nn.Module):
    """The model as a decision-based attacker sees it: a forward without autograd."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)


def _minimal(make_attack, model: torch.nn.Module, params: Section, ctx: AttackContext):
    """The craft function; its `spent` counts the queries of the start search apart from the attack's own, and the
    images the attack itself ran on (`model` is the caller's query counter)."""
    spent = {"start": 0, "own": 0, "attacked": 0}

    def queries() -> int:
        return getattr(model, "images", 0)

    fmodel = foolbox_model(_LabelsOnly(model), model)

    def craft(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv, found, todo = unsearched(model, x, y)
        if len(todo) == 0:
            return x_adv, found
        torch.manual_seed(ctx.seed)  # foolbox draws its noise from torch's global generator
        xs, ys = x[todo], y[todo]
        before = queries()
        criterion = fb.criteria.Misclassification(ys)
        init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=params.init_steps)
        with warnings.catch_warnings():  # "failed to draw sufficient random inputs": handled just below
            warnings.filterwarnings("ignore", "LinearSearchBlendedUniformNoiseAttack failed", UserWarning)
            starts = init.run(fmodel, xs, criterion)
        with torch.no_grad():
            has_start = model(starts).argmax(1) != ys
            if not has_start.all():
                starts, has_start = _other_class_starts(model, x, xs, ys, starts, has_start)
        idx = has_start.nonzero().flatten()
        spent["start"] += queries() - before
        if len(idx) == 0:
            return x_adv, found
        before = queries()
        advs = make_attack(params).run(fmodel, xs[idx], fb.criteria.Misclassification(ys[idx]),
                                       starting_points=starts[idx])
        spent["own"] += queries() - before
        spent["attacked"] += len(idx)
        with torch.no_grad():
            ok = model(advs).argmax(1) != ys[idx]
        rows = todo[idx]
        x_adv[rows] = torch.where(ok.view(-1, 1, 1, 1), advs, xs[idx])
        found[rows] = ok
        return x_adv, found

    craft.spent = spent
    return craft


def _other_class_starts(model, pool, xs, ys, starts, has_start):
    """Where uniform noise never flips the label, start from the nearest pool image the model puts elsewhere."""
    pool_pred = model(pool).argmax(1)
    dist = torch.cdist(xs.flatten(1), pool.flatten(1))
    dist[pool_pred[None, :] == ys[:, None]] = float("inf")
    nearest = dist.argmin(1)
    usable = ~has_start & torch.isfinite(dist.gather(1, nearest[:, None])[:, 0])
    starts = torch.where(usable.view(-1, 1, 1, 1), pool[nearest], starts)
    return starts, has_start | usable


# Budgets: foolbox's defaults (Boundary 25,000 steps) cost hours per batch on a CPU; these are set explicitly and
# the number of queries actually spent is measured and reported with every result.
class BoundaryParams(Section):
    steps: Steps = 1000
    """Iterations of the random walk along the decision boundary (foolbox's default, 25,000, takes hours)."""
    spherical_step: float = 0.01
    """Relative size of the orthogonal step."""
    source_step: float = 0.01
    """Relative size of the step towards the original image."""
    init_steps: Steps = 50
    """Blends tried by the uniform-noise search for a starting point."""


def _boundary(model, eps, params: BoundaryParams, ctx: AttackContext):
    def make(p: BoundaryParams):
        return fb.attacks.BoundaryAttack(steps=p.steps, spherical_step=p.spherical_step, source_step=p.source_step)

    return _minimal(make, model, params, ctx)


class HSJAParams(Section):
    steps: Steps = 20
    """Iterations (gradient estimate, step, binary search)."""
    initial_gradient_eval_steps: Steps = 50
    """Queries for the first gradient estimate."""
    max_gradient_eval_steps: Steps = 1000
    """Cap on the queries of one gradient estimate."""
    constraint: Literal["linf", "l2"] = "linf"
    """The norm whose perturbation is minimised."""
    init_steps: Steps = 50
    """Blends tried by the uniform-noise search for a starting point."""


def _hsja(model, eps, params: HSJAParams, ctx: AttackContext):
    def make(p: HSJAParams):
        return fb.attacks.HopSkipJumpAttack(steps=p.steps, initial_gradient_eval_steps=p.initial_gradient_eval_steps,
                                            max_gradient_eval_steps=p.max_gradient_eval_steps, constraint=p.constraint)

    return _minimal(make, model, params, ctx)


# Costs: queries per step as foolbox spends them (Boundary: a candidate and its check; HSJA: its first gradient
# estimate, which later ones grow from): an upper-bound-ish guess, since both stop early on easy images
register_attack(AttackSpec("boundary", "decision", ("classification",), _boundary, BoundaryParams,
                           "Boundary attack (Brendel et al. 2018), L2 minimal perturbation, label queries only",
                           norm="l2", minimal=True, cost=lambda p: p.steps * 2 * Passes.FORWARD))
register_attack(AttackSpec("hsja", "decision", ("classification",), _hsja, HSJAParams,
                           "HopSkipJump (Chen et al. 2020), L-inf minimal perturbation, label queries only",
                           minimal=True, cost=lambda p: p.steps * p.initial_gradient_eval_steps * Passes.FORWARD))
