"""Name -> backbone. Adding one is a file that calls `register_backbone(BackboneSpec(...))` and one import."""

from __future__ import annotations

from workloads.backbones.base import BackboneSpec

_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    _BACKBONES[spec.name] = spec
    return spec


def available_backbones() -> list[str]:
    return sorted(_BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(available_backbones())}") from None
