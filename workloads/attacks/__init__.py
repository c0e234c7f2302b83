"""Attacks on fine-tuned models, with the gradient source as an axis (docs/protocol.md, "Attacks").

One file per family registers its attacks: gradient.py (fgsm, pgd, apgd, autoattack), minimal.py (fmn), score.py
(square), decision.py (boundary, hsja), hashing.py (hag, sdha). The order of the import lines is the order tables
list the attacks in.
"""

# isort: off
from workloads.attacks import gradient, minimal, score, decision, hashing  # noqa: F401  (register the attacks)
# isort: on
from workloads.attacks.base import (
    GRADIENT_SOURCES,
    AttackContext,
    AttackSpec,
    Budgets,
    Steps,
    check_eps,
    gradient_cost,
    project,
)
from workloads.attacks.outcomes import write_outcomes
from workloads.attacks.registry import ATTACKS, available_attacks, get_attack, register_attack
from workloads.attacks.run import attack, check_attack, gradient_cosine, run_attack
from workloads.attacks.stage import AttackConfig, ConvergeSettings, attack_checkpoint, run_config

__all__ = ["ATTACKS", "GRADIENT_SOURCES", "AttackConfig", "AttackContext", "AttackSpec", "Budgets", "ConvergeSettings",
           "Steps", "attack", "attack_checkpoint", "available_attacks", "check_attack", "check_eps", "get_attack",
           "gradient_cost", "gradient_cosine", "project", "register_attack", "run_attack", "run_config",
           "write_outcomes"]
