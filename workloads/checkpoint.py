"""Checkpoints: state dicts, the rule's state and the config that made them; nothing that needs pickle to load.

Written to a temporary file and renamed, so a crash never leaves a file that looks complete. Read with
`torch.load(..., weights_only=True)`, so a checkpoint from elsewhere cannot run code. `load_model` rebuilds a
fine-tuned model exactly as it was trained (weights, the rule's state, the task's state).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import rules
from workloads import backbones
from workloads.config import StageConfig, checkpoint_config, make_task
from workloads.datasets import load_manifest
from workloads.errors import CheckpointError, CheckpointWriteError, ConfigError
from workloads.files import atomic_write
from workloads.settings import resolve_device
from workloads.tasks import Task


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return atomic_write(path, lambda tmp: torch.save(obj, tmp))
    except (OSError, RuntimeError) as exc:
        # a full disk or a file-size limit surfaces from torch's zip writer as "unexpected pos N vs M"
        free = shutil.disk_usage(path.parent).free / 2**20
        raise CheckpointWriteError(f"checkpoint {path} could not be written ({free:.0f} MiB free on its disk; "
                                   f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}); nothing was "
                                   "saved") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(f"checkpoint {path} cannot be read safely ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
        raise CheckpointError(f"{path} is not a checkpoint of this harness (no model state and config)")
    return obj


@dataclass
class Loaded:
    """A model ready to use: the network, its rule handle (None: plain autograd), its task, config and checkpoint."""

    model: backbones.Network
    handle: rules.RuleHandle | None
    task: Task
    config: StageConfig
    checkpoint: dict


def load_model(checkpoint: str | Path, device: str | torch.device | None = "cpu", attach_rule: bool = True) -> Loaded:
    """A fine-tuned model exactly as it was trained: weights, rule state (same B, same brsf stream), task state;
    on `device` (None: the device its config names)."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind") != "finetune":
        raise ConfigError(f"{checkpoint} is a {ckpt.get('kind')} checkpoint; a fine-tuned one is needed here")
    cfg = checkpoint_config(ckpt, str(checkpoint))
    manifest = load_manifest(cfg.data.root)
    classes = cfg.data.target_classes
    task = make_task(cfg, len(classes) if classes is not None else manifest.num_classes, manifest.label_kind)
    task.load_state_dict(ckpt.get("task_state", {}))
    model = backbones.build(cfg.backbone, task.num_outputs)
    model.load_state_dict(ckpt["model"])
    model = model.to(resolve_device(cfg.device if device is None else str(device))).eval()
    handle = rules.attach(model, ckpt["rule"], seed=cfg.seed, state=ckpt["rule_state"]) if attach_rule else None
    return Loaded(model, handle, task, cfg, ckpt)
