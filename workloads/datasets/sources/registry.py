"""Name -> source adapter. Adding a dataset format is one file with `@register_source` plus one import."""

from __future__ import annotations

from workloads.errors import DataError
from workloads.registry import Registry

SOURCES: Registry[type] = Registry("dataset", "datasets", error=DataError)


def register_source(cls: type) -> type:
    return SOURCES.add(cls.name, cls)


available_sources = SOURCES.names
get_source = SOURCES.get
