"""The training stages as plain functions (no Ray, no MLflow): pretrain, finetune, and the clean metrics.

    pre = pretrain(cfg, "runs/pre.pt")                    # BP on the source classes
    ft = finetune(pre, "frsf", cfg, "runs/ft-frsf.pt")    # new head, all layers trained under the rule

`cfg` is a `StageConfig` or a dict of one (its sections and defaults are below; `harness stage` reads it from
YAML). Fine-tuning follows docs/protocol.md ("Training"): Adam (0.9, 0.999), weight decay 5e-4, learning rate
1e-5 for the backbone and 1e-4 for the new head, no layer frozen.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field
from tqdm import tqdm

import rules
from workloads import backbones
from workloads.checkpoint import load_checkpoint, save_checkpoint
from workloads.datasets import ShardReader, load_manifest
from workloads.datasets.options import DataOptions
from workloads.errors import ConfigError, DivergenceError, unknown_name
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
    """What a training stage needs: the model, the data, the task, its settings, the seed and the device."""

    backbone: one_of(backbones.available_backbones()) = "resnet18"
    weights: str | None = None
    """Initial weights: null (random, then the pretrain stage), imagenet (torchvision's, from the local hub
    cache), or a state-dict file."""
    data: DataOptions
    """Required: the prepared dataset and how to read it."""
    task: task_config_type() = Field({"name": "classification"}, validate_default=True)
    pretrain: PretrainSettings = PretrainSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    rule: one_of(rules.available_rules()) = "bp"
    """The learning rule fine-tuning trains under (`finetune(..., rule, ...)` sets it)."""
    seed: Seed = 0
    device: Device = "auto"


def stage_config(config: dict | StageConfig, where: str = "stage config") -> StageConfig:
    return config if isinstance(config, StageConfig) else validate(StageConfig, config, where)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Loaded:
    model: backbones.Network
    handle: rules.RuleHandle | None
    task: Task
    config: StageConfig
    checkpoint: dict


def make_reader(cfg: StageConfig, split: str, classes, limit, shuffle: bool, batch_size: int, seed: int,
                holdout: float = 0.0, part: str = "all") -> ShardReader:
    data = cfg.data
    manifest = load_manifest(data.root)
    fixed = manifest.image.get("height")
    native = (fixed or data.image_size or 224) + 2 * data.pad
    size = data.image_size or backbones.input_size(cfg.backbone, native)
    resize = None if (fixed is not None and size == native) else size
    return ShardReader(data.root, split, batch_size=batch_size, shuffle=shuffle, seed=seed, classes=classes,
                       limit=limit, pad=data.pad, image_size=resize, channels=3, holdout=holdout, part=part)


def split_names(root: str) -> tuple[str, str, str]:
    """(train, test, database) split names: hashlist data has train/query/database, the others train/test."""
    splits = load_manifest(root).splits
    test = "test" if "test" in splits else ("query" if "query" in splits else "val")
    db = "database" if "database" in splits else "train"
    return "train", test, db


def _check_finite(value: float, stage: str, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise DivergenceError(
            f"{stage} diverged at epoch {epoch}, step {step}: loss is {value}; nothing was saved. "
            "Lower the learning rate or check the data."
        )


def train_step(model: torch.nn.Module, task: Task, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               device: torch.device) -> float:
    """One optimisation step on a CPU batch; returns the loss (checked finite by the caller)."""
    amp = device.type == "cuda"
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if amp:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    try:
        loss = task.loss(out.float(), y)
    except RuntimeError:
        # diverged weights: some losses (the hashing task's BCE) reject NaN inputs with an error of their own.
        # Checked only here, so the usual step pays no extra reduction or device sync.
        if not torch.isfinite(out).all():
            return float("nan")
        raise
    value = loss.item()
    if math.isfinite(value):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return value


def train_epochs(model: torch.nn.Module, task: Task, reader: ShardReader, opt: torch.optim.Optimizer, epochs: int,
                 stage: str, device: torch.device, progress: bool, on_epoch: Callable[[int, dict], None] | None,
                 validate: Callable[[], dict] | None = None) -> list:
    history = []
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        model.train()
        total, n, t0 = 0.0, 0, time.perf_counter()
        bar = tqdm(reader, total=reader.num_batches(), desc=f"{stage} epoch {epoch + 1}/{epochs}", unit="batch",
                   file=sys.stderr, disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            value = train_step(model, task, opt, x, y, device)
            _check_finite(value, stage, epoch, step)
            total += value * len(y)
            n += len(y)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{total / n:.4f}")
        row = {"epoch": epoch, "loss": total / max(n, 1), "seconds": time.perf_counter() - t0, "samples": n}
        if validate is not None:
            row.update(validate())
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
    return history


def _prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def pretrain(config: dict | StageConfig, out: str | Path, progress: bool = True,
             on_epoch: Callable[[int, dict], None] | None = None) -> Path:
    """BP training of a classifier on the source classes; the checkpoint feeds every fine-tuning run."""
    cfg = stage_config(config)
    p, seed, classes = cfg.pretrain, cfg.seed, cfg.data.source_classes
    device = resolve_device(cfg.device)
    num_classes = len(classes) if classes is not None else load_manifest(cfg.data.root).num_classes
    torch.manual_seed(seed)
    model = _prepare_model(backbones.build(cfg.backbone, num_classes, cfg.weights), device)
    task = get_task("classification")(num_classes)
    train_split, test_split, _ = split_names(cfg.data.root)
    reader = make_reader(cfg, train_split, classes, cfg.data.train_limit, True, p.batch_size, seed)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    history = train_epochs(model, task, reader, opt, p.epochs, "pretrain", device, progress, on_epoch)
    test = make_reader(cfg, test_split, classes, cfg.data.test_limit, False, 256, seed)
    metrics = task.evaluate(_Eval(model, device), test)
    return save_checkpoint({
        "kind": "pretrain", "config": cfg.model_dump(), "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "history": history, "metrics": metrics,
    }, out)


class _Eval(torch.nn.Module):
    """Runs a model in eval mode on `device` for batches that arrive on the CPU."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device = model, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model(x.to(self.device)).float().cpu()


def finetune(pretrained: str | Path | None, rule: str, config: dict | StageConfig, out: str | Path,
             progress: bool = True, on_epoch: Callable[[int, dict], None] | None = None) -> Path:
    """Fine-tune every layer under `rule` with a new task head on the target classes; evaluates at the end."""
    loaded = finetune_model(pretrained, rule, config, progress, on_epoch)
    loaded.checkpoint["metrics"] = evaluate_loaded(loaded, resolve_device(loaded.config.device))
    return save_checkpoint(loaded.checkpoint, out)


def finetune_model(pretrained: str | Path | None, rule: str, config: dict | StageConfig, progress: bool = True,
                   on_epoch: Callable[[int, dict], None] | None = None, validation: float = 0.0) -> Loaded:
    """`finetune` without the test-set evaluation and without saving: the trained model, its rule handle and the
    checkpoint it would write (no metrics). With `validation` > 0 that fraction of the training split is held out
    (by sample key) and scored after every epoch: `val_<metric>` in each epoch row, e.g. val_top1 or val_map."""
    if rule not in rules.available_rules():
        raise ConfigError(unknown_name("learning rule", rule, rules.available_rules(), "rules"))
    cfg = stage_config(config).model_copy(update={"rule": rule})
    f, seed, classes = cfg.finetune, cfg.seed, cfg.data.target_classes
    device = resolve_device(cfg.device)
    manifest = load_manifest(cfg.data.root)
    task = make_task(cfg, len(classes) if classes is not None else manifest.num_classes, manifest.label_kind)
    torch.manual_seed(seed)
    model = backbones.build(cfg.backbone, task.num_outputs, cfg.weights if pretrained is None else None)
    if pretrained is not None:
        backbones.load_body_weights(model, load_checkpoint(pretrained)["model"])
    model = _prepare_model(model, device)
    handle = rules.attach(model, rule, seed=seed)
    opt = torch.optim.Adam([
        {"params": model.backbone_parameters(), "lr": f.lr_backbone},
        {"params": model.head_parameters(), "lr": f.lr_head},
    ], betas=(0.9, 0.999), weight_decay=f.weight_decay)
    train_split, _, _ = split_names(cfg.data.root)
    part = "fit" if validation > 0 else "all"
    reader = make_reader(cfg, train_split, classes, cfg.data.train_limit, True, f.batch_size, seed, validation, part)
    validate = _validator(cfg, task, model, device, validation) if validation > 0 else None
    history = train_epochs(model, task, reader, opt, f.epochs, f"finetune[{rule}]", device, progress, on_epoch,
                           validate)
    ckpt = {
        "kind": "finetune", "rule": rule, "config": cfg.model_dump(),
        "pretrained": str(pretrained) if pretrained else None,
        "model": {k: v.cpu() for k, v in model.state_dict().items()}, "rule_state": handle.state_dict(),
        "task_state": task.state_dict(), "history": history,
    }
    return Loaded(model, handle, task, cfg, ckpt)


def _validator(cfg: StageConfig, task: Task, model: torch.nn.Module, device: torch.device,
               fraction: float) -> Callable[[], dict]:
    """Scores the model on the held-out part of the training split (hashing: against the fit part as database)."""
    data, seed = cfg.data, cfg.seed
    train_split, _, _ = split_names(data.root)
    fit_limit = data.train_limit
    # as many held-out images per fit image as in the whole split: a train_limit shrinks both alike
    limit = None if fit_limit is None else max(1, math.ceil(fit_limit * fraction / (1 - fraction)))
    held = make_reader(cfg, train_split, data.target_classes, limit, False, 256, seed, fraction, "holdout")
    db = None
    if task.kind == "hashing":
        db = make_reader(cfg, train_split, data.target_classes, data.db_limit or fit_limit, False, 256, seed,
                         fraction, "fit")
    scored = _Eval(model, device)

    def validate() -> dict:
        metrics = task.evaluate(scored, held, db)
        return {f"val_{task.metric}": metrics[task.metric]}

    return validate


def make_task(cfg: StageConfig, num_classes: int, label_kind: str) -> Task:
    options = cfg.task.model_dump(exclude={"name"})
    return get_task(cfg.task.name)(num_classes, label_kind, **options, seed=cfg.seed)


def checkpoint_config(ckpt: dict, where: str) -> StageConfig:
    """The StageConfig a checkpoint was made with. Checkpoints written before the config was typed hold every
    task's options under `task` (bits of a classifier): only the task's own are kept."""
    cfg = dict(ckpt["config"])
    task = dict(cfg.get("task") or {})
    if task.get("name") in TASKS.names():
        own = get_task(task["name"]).Options.model_fields
        cfg["task"] = {k: v for k, v in task.items() if k == "name" or k in own}
    return stage_config(cfg, f"{where} (its config)")


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


def evaluate_loaded(loaded: Loaded, device: torch.device) -> dict:
    """Clean metrics on the target test split: top-1 (classification) or mAP@k against the database (hashing)."""
    cfg, task, data = loaded.config, loaded.task, loaded.config.data
    _, test_split, db_split = split_names(data.root)
    test = make_reader(cfg, test_split, data.target_classes, data.test_limit, False, 256, cfg.seed)
    model = _Eval(loaded.model, device)
    if task.kind == "hashing":
        db = make_reader(cfg, db_split, data.target_classes, data.db_limit, False, 256, cfg.seed)
        return task.evaluate(model, test, db)
    return task.evaluate(model, test)
