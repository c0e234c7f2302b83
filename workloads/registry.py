"""One name -> object table per axis (backbones, tasks, dataset sources, attacks): add one file plus one line.

Error messages list the names alphabetically; tables list them in registration order (`in_order`), which is the
order of the import lines in the axis's `__init__.py`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from workloads.errors import ConfigError, HarnessError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, plural: str, error: type[HarnessError] = ConfigError) -> None:
        self.kind, self.plural, self.error = kind, plural, error
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        return list(self._items)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(unknown_name(self.kind, name, self.names(), self.plural)) from None
