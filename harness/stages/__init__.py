"""The second room: the stages, one file each, registered in the order their levels run.

    pretrain (BP) -> finetune (rule) -> evaluate -> attack (x gradient source) -> primary (the budget, from
    the baseline) -> converge (the re-run)

Each declares its DAG sections, its nodes and keys, how a node runs without Ray, its cost, its metrics and its
report tables (`harness/stages/base.py`); the rooms above run and read whatever is registered. A stage of your own
is one file with `@register_stage`, imported here or by a plugin (docs/extending.md, "A stage").
"""

# isort: off
from harness.stages import pretrain, finetune, evaluate, attack, primary, converge  # noqa: F401  (register)
# isort: on
from harness.stages.base import MODEL, STAGES, Node, NodeFiles, Plan, Stage, digest, ordered, register_stage

__all__ = ["MODEL", "STAGES", "Node", "NodeFiles", "Plan", "Stage", "digest", "ordered", "register_stage"]
