from __future__ import annotations

_TASKS: dict[str, type] = {}


def register_task(cls: type) -> type:
    _TASKS[cls.name] = cls
    return cls


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> type:
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(available_tasks())}") from None
