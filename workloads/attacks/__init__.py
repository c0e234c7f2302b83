"""Attacks on fine-tuned models, with the gradient source as an axis (PROTOCOL.md section 4)."""

from workloads.attacks import gradient  # noqa: F401  (registers fgsm, pgd)
from workloads.attacks.base import GRADIENT_SOURCES, AttackSpec, check_eps
from workloads.attacks.registry import available_attacks, get_attack, register_attack
from workloads.attacks.run import attack, validate

__all__ = ["GRADIENT_SOURCES", "AttackSpec", "attack", "available_attacks", "check_eps", "get_attack",
           "register_attack", "validate"]
