"""Fine-tuning: a new task head, every layer trained under a learning rule, once per task x rule on top of each
pre-training (docs/protocol.md, "Training"); it ends with the clean test metrics.

Its settings: the DAG's `finetune`, a dataset's own `finetune` over it, then the `finetune_by_cell` patterns that
match the cell (`harness search` writes those), from the least to the most specific.
"""

from __future__ import annotations

from pydantic import Field

from harness.config.grid import DagConfig
from harness.stages.base import MODEL, Node, NodeFiles, Plan, Progress, Stage, digest, register_stage
from harness.stages.training import trained, training_config, training_metrics
from workloads.config import FinetuneSettings
from workloads.errors import Invalid
from workloads.names import Passes
from workloads.tasks import get_task

CELL_AXES = ("dataset", "backbone", "task", "rule")


def settings_for(dag: DagConfig, cell: dict) -> FinetuneSettings:
    """The fine-tuning settings of one cell: the DAG's, the dataset's, then the matching finetune_by_cell
    patterns from the least to the most specific (only the keys each one writes)."""
    out = dag.finetune.model_dump()
    layers = [dag.datasets[cell["dataset"]].finetune]
    matching = []
    for i, (pattern, value) in enumerate(dag.finetune_by_cell.items()):
        parts = pattern.split("/")
        if all(p in ("*", str(cell[a])) for a, p in zip(CELL_AXES, parts, strict=True)):
            matching.append((sum(p != "*" for p in parts), i, value))
    layers += [value for _, _, value in sorted(matching, key=lambda m: m[:2])]
    for layer in layers:
        if layer is not None:
            out.update(layer.model_dump(exclude_unset=True))
    return FinetuneSettings.model_construct(**out)


@register_stage
class Finetune(Stage):
    name, level = "finetune", 1
    trains = True

    def sections(self) -> dict:
        return {"finetune": (FinetuneSettings, FinetuneSettings()),
                "finetune_by_cell": (dict[str, FinetuneSettings], Field({}, description=(
                    'Fine-tuning settings for some cells only, as `harness search` writes them: {"DATASET/BACKBONE/'
                    'TASK/RULE": {lr_head: ...}}, \'*\' for any; the more specific pattern wins.')))}

    def dataset_sections(self) -> dict:
        return {"finetune": (FinetuneSettings | None, Field(None, description=(
            "Fine-tuning settings for this dataset only (the paper: 10 epochs on ImageNet and NUS-WIDE, 20 "
            "elsewhere).")))}

    def check(self, dag: DagConfig) -> None:
        known = {"dataset": list(dag.datasets), "backbone": dag.backbones, "task": list(dag.task_options()),
                 "rule": dag.rules}
        for pattern in dag.finetune_by_cell:
            parts = pattern.split("/")
            if len(parts) != len(CELL_AXES):
                raise Invalid(f"finetune_by_cell.{pattern}", "expected DATASET/BACKBONE/TASK/RULE, each a name of "
                              "this DAG or '*'")
            for axis, part in zip(CELL_AXES, parts, strict=True):
                if part != "*" and part not in known[axis]:
                    raise Invalid(f"finetune_by_cell.{pattern}", f"{axis} {part!r} is not in this DAG; allowed: "
                                  f"{', '.join(map(str, known[axis]))}, *")

    def nodes(self, plan: Plan) -> list[Node]:
        dag, out = plan.dag, []
        pretrained = {(n.axes["dataset"], n.axes["backbone"], n.axes["seed"]): n for n in plan.of("pretrain")}
        for ds_name in dag.datasets:
            tasks = dag.task_options(ds_name)
            for backbone in dag.backbones:
                for seed in dag.seeds:
                    pre = pretrained.get((ds_name, backbone, seed))
                    for task, options in tasks.items():
                        for rule in dag.rules:
                            axes = {"dataset": ds_name, "backbone": backbone, "seed": seed, "task": task,
                                    "rule": rule}
                            cfg = training_config(
                                plan, ds_name, backbone, seed, rule=rule, finetune=settings_for(dag, axes),
                                task=get_task(task).Config.model_construct(name=task, **options))
                            keyed = cfg.model_dump(include={"backbone", "seed", "weights", "data", "task",
                                                            "finetune", "rule"})
                            keyed["data"].pop("root")
                            key = digest({"stage": self.name, "config": keyed, "dataset": ds_name,
                                          "data": plan.data_digests[ds_name], "pretrained": pre and pre.key})
                            node = Node(self.name, key, f"finetune {ds_name}/{backbone}/{task}/{rule}/s{seed}",
                                        axes, cfg)
                            out.append(node.reads(pretrained=pre) if pre is not None else node)
        return out

    def run(self, node: Node, files: NodeFiles, progress: Progress) -> dict:
        from workloads.train import finetune

        pre = files.inputs["pretrained"] / MODEL if "pretrained" in files.inputs else None
        return trained(files, progress, node.config.finetune.epochs, lambda path, on_epoch: finetune(
            pre, node.config.rule, node.config, path, progress=False, on_epoch=on_epoch))

    def passes(self, node: Node, counts: dict[str, int]) -> float:
        db = counts["database"] if get_task(node.axes["task"]).kind == "hashing" else 0
        return node.config.finetune.epochs * counts["train"] * Passes.TRAIN + (counts["test"] + db) * Passes.FORWARD

    def metrics(self, result: dict) -> dict[str, float]:
        return training_metrics(result)
