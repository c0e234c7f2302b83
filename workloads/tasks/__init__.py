"""Tasks: classification (top-1) and hashing retrieval (mAP@k)."""

from workloads.tasks import classification, hashing  # noqa: F401  (each registers itself)
from workloads.tasks.base import Task
from workloads.tasks.metrics import map_at_k, relevance
from workloads.tasks.registry import TASKS, available_tasks, get_task, register_task, task_config_type

__all__ = ["TASKS", "Task", "available_tasks", "get_task", "map_at_k", "register_task", "relevance", "task_config_type"]
