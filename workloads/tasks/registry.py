from __future__ import annotations

from workloads.registry import Registry

TASKS: Registry[type] = Registry("task", "tasks")


def register_task(cls: type) -> type:
    return TASKS.add(cls.name, cls)


available_tasks = TASKS.names
get_task = TASKS.get
