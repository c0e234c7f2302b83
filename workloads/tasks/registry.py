"""Name -> task class. Adding a task is one file with a `@register_task` class plus one import in __init__."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, create_model

from workloads.registry import Registry
from workloads.settings import Kind

TASKS: Registry[type] = Registry("task", "tasks")


def register_task(cls: type) -> type:
    return TASKS.add(cls.name, cls)


available_tasks = TASKS.names
get_task = TASKS.get


def task_config_type() -> object:
    """The `task` section of a stage config, `{name: NAME, ...its options}`, for every registered task."""
    members = tuple(create_model(f"{get_task(n).__name__}Config", __base__=get_task(n).Options,
                                 name=(Literal[n], ...)) for n in TASKS.in_order())
    return Annotated[Union[members], Field(discriminator="name"), Kind("task", "tasks")]  # noqa: UP007
