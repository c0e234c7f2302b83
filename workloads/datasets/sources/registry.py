"""Name -> source adapter. Adding a dataset format is one file with `@register_source` plus one import."""

from __future__ import annotations

from workloads.datasets.errors import DataError

_SOURCES: dict[str, type] = {}


def register_source(cls: type) -> type:
    _SOURCES[cls.name] = cls
    return cls


def available_sources() -> list[str]:
    return sorted(_SOURCES)


def get_source(name: str) -> type:
    try:
        return _SOURCES[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(available_sources())}") from None
