"""The training stages as plain functions (no Ray, no MLflow): pretrain and finetune, and the loop they share.

    pre = pretrain(cfg, "runs/pre.pt")                    # BP on the source classes
    ft = finetune(pre, "frsf", cfg, "runs/ft-frsf.pt")    # new head, all layers trained under the rule

`cfg` is a `workloads.config.StageConfig` or a dict of one (`harness stage` reads it from YAML). Fine-tuning follows
docs/protocol.md ("Training"); its settings and their defaults are in workloads/config.py.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

import rules
from workloads import backbones
from workloads.checkpoint import Loaded, load_checkpoint, save_checkpoint
from workloads.config import StageConfig, make_task, stage_config
from workloads.datasets import ShardReader, load_manifest
from workloads.errors import ConfigError, DivergenceError, unknown_name
from workloads.evaluate import EvalMode, evaluate_loaded
from workloads.inputs import make_reader, split_names
from workloads.settings import resolve_device
from workloads.tasks import Task, get_task


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
                 score_heldout: Callable[[], dict] | None = None) -> list:
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
        if score_heldout is not None:
            row.update(score_heldout())
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
    manifest = load_manifest(cfg.data.root)
    num_classes = len(classes) if classes is not None else manifest.num_classes
    torch.manual_seed(seed)
    model = _prepare_model(backbones.build(cfg.backbone, num_classes, cfg.weights), device)
    task = get_task("classification")(num_classes)
    train_split, test_split, _ = split_names(manifest)
    reader = make_reader(cfg, train_split, classes, cfg.data.train_limit, True, p.batch_size, seed)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    history = train_epochs(model, task, reader, opt, p.epochs, "pretrain", device, progress, on_epoch)
    test = make_reader(cfg, test_split, classes, cfg.data.test_limit, False, 256, seed)
    metrics = task.evaluate(EvalMode(model, device), test)
    return save_checkpoint({
        "kind": "pretrain", "config": cfg.model_dump(), "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "history": history, "metrics": metrics,
    }, out)


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
    train_split, _, _ = split_names(manifest)
    part = "fit" if validation > 0 else "all"
    reader = make_reader(cfg, train_split, classes, cfg.data.train_limit, True, f.batch_size, seed, validation, part)
    heldout = _heldout_scorer(cfg, task, model, device, validation) if validation > 0 else None
    history = train_epochs(model, task, reader, opt, f.epochs, f"finetune[{rule}]", device, progress, on_epoch,
                           heldout)
    ckpt = {
        "kind": "finetune", "rule": rule, "config": cfg.model_dump(),
        "pretrained": str(pretrained) if pretrained else None,
        "model": {k: v.cpu() for k, v in model.state_dict().items()}, "rule_state": handle.state_dict(),
        "task_state": task.state_dict(), "history": history,
    }
    return Loaded(model, handle, task, cfg, ckpt)


def _heldout_scorer(cfg: StageConfig, task: Task, model: torch.nn.Module, device: torch.device,
               fraction: float) -> Callable[[], dict]:
    """Scores the model on the held-out part of the training split (hashing: against the fit part as database)."""
    data, seed = cfg.data, cfg.seed
    train_split, _, _ = split_names(load_manifest(data.root))
    fit_limit = data.train_limit
    # as many held-out images per fit image as in the whole split: a train_limit shrinks both alike
    limit = None if fit_limit is None else max(1, math.ceil(fit_limit * fraction / (1 - fraction)))
    held = make_reader(cfg, train_split, data.target_classes, limit, False, 256, seed, fraction, "holdout")
    db = None
    if task.kind == "hashing":
        db = make_reader(cfg, train_split, data.target_classes, data.db_limit or fit_limit, False, 256, seed,
                         fraction, "fit")
    scored = EvalMode(model, device)

    def score() -> dict:
        metrics = task.evaluate(scored, held, db)
        return {f"val_{task.metric}": metrics[task.metric]}

    return score
