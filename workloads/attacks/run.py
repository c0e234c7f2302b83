"""`attack(...)`: robustness of a fine-tuned model to one attack, per eps, for one gradient source."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

from workloads.attacks.base import GRADIENT_SOURCES, AttackSpec, check_eps
from workloads.attacks.registry import get_attack


def validate(attack: str, task_kind: str, source: str | None, eps_grid: list[float]) -> AttackSpec:
    """Every config error an attack can have, raised before anything is computed."""
    spec = get_attack(attack)
    if task_kind not in spec.tasks:
        raise ValueError(f"attack {attack!r} does not apply to a {task_kind} model (it applies to: "
                         f"{', '.join(spec.tasks)})")
    if spec.needs_gradient_source:
        if source not in GRADIENT_SOURCES:
            raise ValueError(f"gradient source {source!r} for {attack!r}: choose one of {', '.join(GRADIENT_SOURCES)}")
    elif source not in (None, "none"):
        raise ValueError(f"{attack!r} queries outputs only; it takes no gradient source (got {source!r})")
    check_eps(eps_grid)
    return spec


def attack(target, attack_name: str, source: str | None, eps_grid: list[float], batches: Iterable,
           sibling=None, params: dict | None = None, seed: int = 0) -> list[dict]:
    """Per eps: robust accuracy, attack success rate, mean L-inf and L2 of the perturbation.

    target / sibling: `workloads.train.Loaded` (model + rule handle). `sibling` (the BP-fine-tuned twin) is needed
    for source 'transfer'. Success rate counts samples the target classified correctly before and wrongly after.
    """
    spec = validate(attack_name, target.task.kind, source, eps_grid)
    if source == "transfer" and sibling is None:
        raise ValueError("gradient source 'transfer' needs the BP-fine-tuned sibling model")
    params = {**spec.defaults, **(params or {})}
    crafting = sibling.model if source == "transfer" else target.model
    use_exact = source == "exact" and target.handle is not None
    exact = target.handle.exact if use_exact else contextlib.nullcontext
    batches = list(batches)
    with torch.no_grad():  # the clean predictions do not depend on eps: once per batch, not once per eps
        clean_ok = [target.model(x).argmax(1) == y for x, y in batches]
    rows = []
    for eps in check_eps(eps_grid):
        torch.manual_seed(seed)  # random starts are reproducible
        craft = spec.build(crafting, eps, params)
        n = correct = fooled = clean_correct = 0
        linf = l2 = 0.0
        for (x, y), ok in zip(batches, clean_ok, strict=True):
            with exact():
                x_adv = craft(x, y).detach()
            with torch.no_grad():
                adv_pred = target.model(x_adv).argmax(1)
            delta = (x_adv - x).flatten(1)
            n += len(y)
            correct += int((adv_pred == y).sum())
            clean_correct += int(ok.sum())
            fooled += int((ok & (adv_pred != y)).sum())
            linf += float(delta.abs().amax(1).sum())
            l2 += float(delta.norm(dim=1).sum())
        rows.append({"attack": attack_name, "source": source, "eps": eps, "robust_acc": correct / n,
                     "clean_acc": clean_correct / n, "success_rate": fooled / max(clean_correct, 1),
                     "linf": linf / n, "l2": l2 / n, "n": n})
    return rows
