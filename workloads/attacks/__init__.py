"""Attacks on fine-tuned models, with the gradient source as an axis (PROTOCOL.md section 4).

One file per family registers its attacks: gradient.py (fgsm, pgd, apgd, autoattack), score.py (square),
decision.py (boundary, hsja), hashing.py (hag, sdha).
"""

from workloads.attacks import decision, gradient, hashing, score  # noqa: F401  (register the attacks)
from workloads.attacks.base import GRADIENT_SOURCES, AttackContext, AttackSpec, check_eps, project
from workloads.attacks.registry import available_attacks, get_attack, register_attack
from workloads.attacks.run import attack, gradient_cosine, validate
from workloads.attacks.stage import attack_checkpoint

__all__ = ["GRADIENT_SOURCES", "AttackContext", "AttackSpec", "attack", "attack_checkpoint", "available_attacks",
           "check_eps", "get_attack", "gradient_cosine", "project", "register_attack", "validate"]
