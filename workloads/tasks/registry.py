"""Name -> task class. Adding a task is one file with a `@register_task` class plus one import in __init__."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, create_model

from workloads.registry import Registry
from workloads.settings import UnionTag

TASKS: Registry[type] = Registry("task", "tasks")


def register_task(cls: type) -> type:
    """Register `cls` under its `name`, and give it `Config`: its Options plus `name`, the `task` section of a stage
    config. `Config` is an attribute of the class, so its instances pickle by reference (to Ray's workers)."""
    config = create_model(f"{cls.__name__}Config", __base__=cls.Options, __module__=cls.__module__,
                          name=(Literal[cls.name], ...))
    config.__qualname__ = f"{cls.__qualname__}.Config"
    cls.Config = config
    return TASKS.add(cls.name, cls)


available_tasks = TASKS.names
get_task = TASKS.get


def task_config_type() -> object:
    """The `task` section of a stage config, `{name: NAME, ...its options}`, for every registered task."""
    members = tuple(get_task(n).Config for n in TASKS.in_order())
    return Annotated[Union[members], Field(discriminator="name"), UnionTag("task", "tasks")]  # noqa: UP007
