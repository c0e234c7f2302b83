"""What the two training stages share: a node's settings from the DAG's, a run into the node's folder with a
progress line per epoch, and the numbers MLflow records of a trained model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.stages.base import MODEL, NodeFiles, Plan, Progress, finite
from workloads.config import StageConfig
from workloads.datasets.options import DataOptions
from workloads.tasks import get_task


def training_config(plan: Plan, dataset: str, backbone: str, seed: int, **more) -> StageConfig:
    """A training node's settings, from the DAG's (checked when it was read: nothing is checked again); `more`
    sets the task, the fine-tuning settings or the rule."""
    dag, entry = plan.dag, plan.dag.datasets[dataset]
    data = DataOptions.model_construct(**{k: getattr(entry, k) for k in DataOptions.model_fields})
    task = get_task("classification").Config.model_construct(name="classification")
    return StageConfig.model_construct(**{
        "backbone": backbone, "weights": dag.weights, "data": data, "task": task, "pretrain": dag.pretrain,
        "finetune": dag.finetune, "rule": dag.baseline, "seed": seed, "device": dag.device, **more})


def trained(files: NodeFiles, progress: Progress, epochs: int,
            train: Callable[[Path, Callable[[int, dict], None]], Path]) -> dict:
    """Run a training function (`train(checkpoint path, on_epoch)`) into the node's folder, each epoch a progress
    line; the checkpoint's numbers."""
    from workloads.checkpoint import load_checkpoint

    def on_epoch(epoch: int, row: dict) -> None:
        progress({"epoch": epoch + 1, "epochs": epochs, "loss": row["loss"]})

    ckpt = load_checkpoint(train(files.folder / MODEL, on_epoch))
    return {"metrics": ckpt["metrics"], "history": ckpt["history"]}


def training_metrics(result: dict) -> dict[str, float]:
    """A training node's numbers: its final metrics and the loss of every epoch."""
    out = {k: v for k, v in result.get("metrics", {}).items() if finite(v)}
    for i, row in enumerate(result.get("history", [])):
        out[f"train_loss/epoch_{i + 1}"] = row["loss"]
    return out
