"""The stages as plain functions (no Ray, no MLflow): pretrain, finetune, evaluate.

    pre = pretrain(cfg, "runs/pre.pt")                    # BP on the source classes
    ft = finetune(pre, "frsf", cfg, "runs/ft-frsf.pt")    # new head, all layers trained under the rule
    metrics = evaluate(ft)                                # top-1 or mAP@k on the target test split

Config (a dict; defaults in DEFAULTS): backbone, weights, data{root, source_classes, target_classes, pad,
image_size, train_limit, test_limit, db_limit}, task{name, bits, loss, topk}, epochs, batch_size, lr (pretrain),
lr_backbone, lr_head, weight_decay, seed, device. Fine-tuning follows PROTOCOL.md section 3: Adam (0.9, 0.999),
weight decay 5e-4, learning rate 1e-5 for the backbone and 1e-4 for the new head, no layer frozen.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import rules
from workloads import backbones
from workloads.checkpoint import load_checkpoint, save_checkpoint
from workloads.datasets import ShardReader, load_manifest
from workloads.tasks import Task, get_task

DEFAULTS: dict[str, Any] = {
    "backbone": "resnet18",
    "weights": None,
    "data": {"root": "data/fashion-mnist", "source_classes": None, "target_classes": None, "pad": 0,
             "image_size": None, "train_limit": None, "test_limit": None, "db_limit": None},
    "task": {"name": "classification", "bits": 32, "loss": "csq", "topk": None},
    "pretrain": {"epochs": 2, "batch_size": 128, "lr": 1e-3, "weight_decay": 5e-4},
    "finetune": {"epochs": 2, "batch_size": 64, "lr_backbone": 1e-5, "lr_head": 1e-4, "weight_decay": 5e-4},
    "seed": 0,
    "device": "auto",
}


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite; nothing was saved."""


def merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Loaded:
    model: backbones.Network
    handle: rules.RuleHandle | None
    task: Task
    config: dict
    checkpoint: dict


def make_reader(cfg: dict, split: str, classes, limit, shuffle: bool, batch_size: int, seed: int,
                holdout: float = 0.0, part: str = "all") -> ShardReader:
    data = cfg["data"]
    manifest = load_manifest(data["root"])
    fixed = manifest.image.get("height")
    native = (fixed or data.get("image_size") or 224) + 2 * data.get("pad", 0)
    size = data.get("image_size") or backbones.input_size(cfg["backbone"], native)
    resize = None if (fixed is not None and size == native) else size
    return ShardReader(data["root"], split, batch_size=batch_size, shuffle=shuffle, seed=seed, classes=classes,
                       limit=limit, pad=data.get("pad", 0), image_size=resize, channels=3, holdout=holdout, part=part)


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


def _fit(model: torch.nn.Module, task: Task, reader: ShardReader, opt: torch.optim.Optimizer, epochs: int,
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


def pretrain(config: dict, out: str | Path, progress: bool = True,
             on_epoch: Callable[[int, dict], None] | None = None) -> Path:
    """BP training of a classifier on the source classes; the checkpoint feeds every fine-tuning run."""
    cfg = merge(DEFAULTS, config)
    p, seed = cfg["pretrain"], int(cfg["seed"])
    device = resolve_device(cfg["device"])
    classes = cfg["data"].get("source_classes")
    manifest = load_manifest(cfg["data"]["root"])
    num_classes = len(classes) if classes is not None else manifest.num_classes
    torch.manual_seed(seed)
    model = _prepare_model(backbones.build(cfg["backbone"], num_classes, cfg.get("weights")), device)
    task = get_task("classification")(num_classes)
    train_split, test_split, _ = split_names(cfg["data"]["root"])
    reader = make_reader(cfg, train_split, classes, cfg["data"].get("train_limit"), True, p["batch_size"], seed)
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    history = _fit(model, task, reader, opt, p["epochs"], "pretrain", device, progress, on_epoch)
    test = make_reader(cfg, test_split, classes, cfg["data"].get("test_limit"), False, 256, seed)
    metrics = task.evaluate(_Eval(model, device), test)
    return save_checkpoint({
        "kind": "pretrain", "config": cfg, "model": {k: v.cpu() for k, v in model.state_dict().items()},
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


def finetune(pretrained: str | Path | None, rule: str, config: dict, out: str | Path, progress: bool = True,
             on_epoch: Callable[[int, dict], None] | None = None) -> Path:
    """Fine-tune every layer under `rule` with a new task head on the target classes; evaluates at the end."""
    loaded = finetune_model(pretrained, rule, config, progress, on_epoch)
    device = resolve_device(loaded.config["device"])
    loaded.checkpoint["metrics"] = evaluate_loaded(loaded, device)
    return save_checkpoint(loaded.checkpoint, out)


def finetune_model(pretrained: str | Path | None, rule: str, config: dict, progress: bool = True,
                   on_epoch: Callable[[int, dict], None] | None = None, validation: float = 0.0) -> Loaded:
    """`finetune` without the test-set evaluation and without saving: the trained model, its rule handle and the
    checkpoint it would write (no metrics). With `validation` > 0 that fraction of the training split is held out
    (by sample key) and scored after every epoch: `val_<metric>` in each epoch row, e.g. val_top1 or val_map."""
    cfg = merge(DEFAULTS, config)
    rules.get_rule(rule)
    f, seed = cfg["finetune"], int(cfg["seed"])
    device = resolve_device(cfg["device"])
    classes = cfg["data"].get("target_classes")
    manifest = load_manifest(cfg["data"]["root"])
    num_classes = len(classes) if classes is not None else manifest.num_classes
    task = make_task(cfg, num_classes, manifest.label_kind)
    torch.manual_seed(seed)
    model = backbones.build(cfg["backbone"], task.num_outputs, cfg.get("weights") if pretrained is None else None)
    if pretrained is not None:
        backbones.load_body_weights(model, load_checkpoint(pretrained)["model"])
    model = _prepare_model(model, device)
    handle = rules.attach(model, rule, seed=seed)
    opt = torch.optim.Adam([
        {"params": model.backbone_parameters(), "lr": f["lr_backbone"]},
        {"params": model.head_parameters(), "lr": f["lr_head"]},
    ], betas=(0.9, 0.999), weight_decay=f["weight_decay"])
    train_split, _, _ = split_names(cfg["data"]["root"])
    part = "fit" if validation > 0 else "all"
    reader = make_reader(cfg, train_split, classes, cfg["data"].get("train_limit"), True, f["batch_size"], seed,
                         validation, part)
    validate = _validator(cfg, task, model, device, validation) if validation > 0 else None
    history = _fit(model, task, reader, opt, f["epochs"], f"finetune[{rule}]", device, progress, on_epoch, validate)
    ckpt = {
        "kind": "finetune", "rule": rule, "config": cfg, "pretrained": str(pretrained) if pretrained else None,
        "model": {k: v.cpu() for k, v in model.state_dict().items()}, "rule_state": handle.state_dict(),
        "task_state": task.state_dict(), "history": history,
    }
    return Loaded(model, handle, task, cfg, ckpt)


def _validator(cfg: dict, task: Task, model: torch.nn.Module, device: torch.device,
               fraction: float) -> Callable[[], dict]:
    """Scores the model on the held-out part of the training split (hashing: against the fit part as database)."""
    data, seed = cfg["data"], int(cfg["seed"])
    classes = data.get("target_classes")
    train_split, _, _ = split_names(data["root"])
    fit_limit = data.get("train_limit")
    # as many held-out images per fit image as in the whole split: a train_limit shrinks both alike
    limit = None if fit_limit is None else max(1, math.ceil(fit_limit * fraction / (1 - fraction)))
    held = make_reader(cfg, train_split, classes, limit, False, 256, seed, fraction, "holdout")
    db = None
    if task.kind == "hashing":
        db = make_reader(cfg, train_split, classes, data.get("db_limit") or fit_limit, False, 256, seed, fraction,
                         "fit")
    scored = _Eval(model, device)

    def validate() -> dict:
        metrics = task.evaluate(scored, held, db)
        return {f"val_{task.metric}": metrics[task.metric]}

    return validate


def make_task(cfg: dict, num_classes: int, label_kind: str) -> Task:
    t = dict(cfg["task"])
    name = t.pop("name")
    if name == "classification":
        return get_task(name)(num_classes, label_kind)
    return get_task(name)(num_classes, label_kind, bits=t.get("bits", 32), loss=t.get("loss", "csq"),
                          topk=t.get("topk"), seed=int(cfg["seed"]))


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu", attach_rule: bool = True) -> Loaded:
    """A fine-tuned model exactly as it was trained: weights, rule state (same B, same brsf stream), task state."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind") != "finetune":
        raise ValueError(f"{checkpoint} is a {ckpt.get('kind')} checkpoint; a fine-tuned one is needed here")
    cfg = ckpt["config"]
    manifest = load_manifest(cfg["data"]["root"])
    classes = cfg["data"].get("target_classes")
    task = make_task(cfg, len(classes) if classes is not None else manifest.num_classes, manifest.label_kind)
    task.load_state_dict(ckpt.get("task_state", {}))
    model = backbones.build(cfg["backbone"], task.num_outputs)
    model.load_state_dict(ckpt["model"])
    model = model.to(torch.device(device)).eval()
    handle = rules.attach(model, ckpt["rule"], seed=int(cfg["seed"]), state=ckpt["rule_state"]) if attach_rule else None
    return Loaded(model, handle, task, cfg, ckpt)


def evaluate_loaded(loaded: Loaded, device: torch.device) -> dict:
    cfg, task = loaded.config, loaded.task
    data, seed = cfg["data"], int(cfg["seed"])
    classes = data.get("target_classes")
    train_split, test_split, db_split = split_names(data["root"])
    test = make_reader(cfg, test_split, classes, data.get("test_limit"), False, 256, seed)
    model = _Eval(loaded.model, device)
    if task.kind == "hashing":
        db = make_reader(cfg, db_split, classes, data.get("db_limit"), False, 256, seed)
        return task.evaluate(model, test, db)
    return task.evaluate(model, test)


def evaluate(checkpoint: str | Path, device: str = "auto") -> dict:
    """Clean metrics of a fine-tuned checkpoint: top-1 (classification) or mAP@k (hashing) on the target test split."""
    dev = resolve_device(device)
    return evaluate_loaded(load_model(checkpoint, dev), dev)
