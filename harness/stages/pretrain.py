"""Pre-training: BP on the source classes, once per dataset x backbone x seed; every fine-tuning starts from it.

A DAG with `weights: imagenet` (or a weights file) has no pretrain stage: fine-tuning starts from those weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.stages.base import MODEL, Node, NodeFiles, Plan, Progress, Stage, digest, finite, register_stage
from workloads.config import PretrainSettings, StageConfig
from workloads.datasets.options import DataOptions
from workloads.names import Passes
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


@register_stage
class Pretrain(Stage):
    name, level = "pretrain", 0
    trains = True

    def sections(self) -> dict:
        return {"pretrain": (PretrainSettings, PretrainSettings())}

    def nodes(self, plan: Plan) -> list[Node]:
        dag, out = plan.dag, []
        if dag.weights is not None:
            return out
        for ds_name in dag.datasets:
            for backbone in dag.backbones:
                for seed in dag.seeds:
                    cfg = training_config(plan, ds_name, backbone, seed)
                    keyed = cfg.model_dump(include={"backbone", "seed", "weights", "data", "pretrain"})
                    # the manifest's hash names the data, not the folder it sits in
                    for k in ("root", "target_classes", "db_limit"):
                        keyed["data"].pop(k)
                    key = digest({"stage": self.name, "config": keyed, "dataset": ds_name,
                                  "data": plan.data_digests[ds_name]})
                    out.append(Node(self.name, key, f"pretrain {ds_name}/{backbone}/s{seed}",
                                    {"dataset": ds_name, "backbone": backbone, "seed": seed}, cfg))
        return out

    def run(self, node: Node, files: NodeFiles, progress: Progress) -> dict:
        from workloads.train import pretrain

        return trained(files, progress, node.config.pretrain.epochs,
                       lambda path, on_epoch: pretrain(node.config, path, progress=False, on_epoch=on_epoch))

    def passes(self, node: Node, counts: dict[str, int]) -> float:
        return (node.config.pretrain.epochs * counts["train_source"] * Passes.TRAIN
                + counts["test_source"] * Passes.FORWARD)

    def metrics(self, result: dict) -> dict[str, float]:
        return training_metrics(result)
