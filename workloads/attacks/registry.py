"""Name -> attack. Adding an attack is one file registering an AttackSpec plus one import in __init__."""

from __future__ import annotations

from workloads.attacks.base import AttackSpec
from workloads.registry import Registry

ATTACKS: Registry[AttackSpec] = Registry("attack", "attacks")


def register_attack(spec: AttackSpec) -> AttackSpec:
    return ATTACKS.add(spec.name, spec)


available_attacks = ATTACKS.names
get_attack = ATTACKS.get
