"""Name -> backbone. Adding one is a file that calls `register_backbone(BackboneSpec(...))` and one import."""

from __future__ import annotations

from workloads.backbones.base import BackboneSpec
from workloads.registry import Registry

BACKBONES: Registry[BackboneSpec] = Registry("backbone", "backbones")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    return BACKBONES.add(spec.name, spec)


available_backbones = BACKBONES.names
get_backbone = BACKBONES.get
