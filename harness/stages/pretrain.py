"""Pre-training: BP on the source classes, once per dataset x backbone x seed; every fine-tuning starts from it.

A DAG with `weights: imagenet` (or a weights file) has no pretrain stage: fine-tuning starts from those weights.
"""

from __future__ import annotations

from harness.stages.base import Node, NodeFiles, Plan, Progress, Stage, digest, register_stage
from harness.stages.training import trained, training_config, training_metrics
from workloads.config import PretrainSettings
from workloads.names import Passes


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
                    cfg = training_config(plan, ds_name, backbone, seed, rule="bp")  # pre-training is BP
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
