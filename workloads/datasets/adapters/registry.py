"""Name -> dataset adapter. Adding a dataset format is one file with `@register_adapter` plus one import."""

from __future__ import annotations

from workloads.errors import DataError
from workloads.registry import Registry

ADAPTERS: Registry[type] = Registry("dataset", "datasets", error=DataError)


def register_adapter(cls: type) -> type:
    return ADAPTERS.add(cls.name, cls)


available_adapters = ADAPTERS.names
get_adapter = ADAPTERS.get
