"""What a training stage is configured with (`StageConfig`), and the training sections it is made of.

    cfg = stage_config({"data": {"root": "data/fashion-mnist"}, "task": {"name": "hashing", "bits": 16}})

Fine-tuning follows docs/protocol.md ("Training"): Adam (0.9, 0.999), weight decay 5e-4, learning rate 1e-5 for the
backbone and 1e-4 for the new head, no layer frozen. The names a config takes (backbones, tasks, rules) come from
the registries as they are when it is validated, so a rule or task registered after this module was imported (a
user's plugin) is accepted: `stage_config_model()` is rebuilt whenever a registry has grown.
"""

from __future__ import annotations

import functools

from pydantic import Field, SerializeAsAny, create_model

import rules
from workloads import backbones
from workloads.datasets.options import DataOptions
from workloads.settings import Count, Device, Rate, Section, Seed, one_of, validate
from workloads.tasks import TASKS, Task, get_task, task_config_type


class PretrainSettings(Section):
    epochs: Count = 2
    batch_size: Count = 128
    lr: Rate = 1e-3
    """Adam learning rate."""
    weight_decay: Rate = 5e-4


class FinetuneSettings(Section):
    epochs: Count = 2
    batch_size: Count = 64
    lr_backbone: Rate = 1e-5
    """Adam learning rate of every layer but the head (the paper: 1e-5)."""
    lr_head: Rate = 1e-4
    """Adam learning rate of the new head (the paper: 1e-4)."""
    weight_decay: Rate = 5e-4


class StageConfig(Section):
    """What a training stage needs: the model, the data, the task, its settings, the seed and the device. The names
    are checked by `stage_config_model()`, which narrows `backbone`, `task` and `rule` to the registered ones."""

    backbone: str = "resnet18"
    weights: str | None = None
    """Initial weights: null (random, then the pretrain stage), imagenet (torchvision's, from the local hub
    cache), or a state-dict file."""
    data: DataOptions
    """Required: the prepared dataset and how to read it."""
    task: SerializeAsAny[Section] = Field(None, validate_default=False)  # a task's Config; narrowed below
    pretrain: PretrainSettings = PretrainSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    rule: str = "bp"
    """The learning rule fine-tuning trains under (`finetune(..., rule, ...)` sets it)."""
    seed: Seed = 0
    device: Device = "auto"


def stage_config_model() -> type[StageConfig]:
    """StageConfig with the names of every backbone, task and rule registered now."""
    return _model(tuple(backbones.available_backbones()), tuple(TASKS.in_order()), tuple(rules.available_rules()))


@functools.cache
def _model(backbone_names: tuple, task_names: tuple, rule_names: tuple) -> type[StageConfig]:
    return create_model(
        "StageConfig", __base__=StageConfig, __module__=__name__,
        backbone=(one_of(list(backbone_names)), "resnet18"),
        task=(task_config_type(), Field({"name": "classification"}, validate_default=True)),
        rule=(one_of(list(rule_names)), "bp"))


def stage_config(config: dict | StageConfig, where: str = "stage config") -> StageConfig:
    return config if isinstance(config, StageConfig) else validate(stage_config_model(), config, where)


def checkpoint_config(ckpt: dict, where: str) -> StageConfig:
    """The StageConfig a checkpoint was made with. Checkpoints written before the config was typed hold every
    task's options under `task` (bits of a classifier): only the task's own are kept."""
    cfg = dict(ckpt["config"])
    task = dict(cfg.get("task") or {})
    if task.get("name") in TASKS.names():
        own = get_task(task["name"]).Options.model_fields
        cfg["task"] = {k: v for k, v in task.items() if k == "name" or k in own}
    return stage_config(cfg, f"{where} (its config)")


def make_task(cfg: StageConfig, num_classes: int, label_kind: str) -> Task:
    """The configured task for a dataset of `num_classes` classes whose labels are `label_kind`."""
    options = cfg.task.model_dump(exclude={"name"})
    return get_task(cfg.task.name)(num_classes, label_kind, **options, seed=cfg.seed)
