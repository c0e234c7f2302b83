"""From a validated DAG to stage nodes: the fewest trainings the grid needs, each keyed by what determines it.

A node's key hashes its stage, the settings that change its result, the dataset's name and manifest (not the
folder it sits in) and its inputs' keys:
the same pretraining feeds every rule, the same fine-tuned model feeds every attack, and changing one attack's eps
grid changes only that attack's keys. The device is not part of a key (where a node runs does not name it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.dag import STAGES, Dag
from harness.verdicts import RERUN
from workloads.errors import DataError


@dataclass
class Node:
    stage: str
    key: str
    label: str
    axes: dict  # dataset, backbone, seed, task, rule, attack, source: what the report groups by
    config: dict  # what the stage function receives
    inputs: dict = field(default_factory=dict)  # role -> key of the node it reads ("pretrained", "model", "sibling")

    def to_dict(self) -> dict:
        return {"stage": self.stage, "key": self.key, "label": self.label, "axes": self.axes, "config": self.config,
                "inputs": self.inputs}


def digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _fingerprint(root: str, where: str, name: str, require: bool = True) -> str:
    manifest = Path(root) / "manifest.json"
    try:
        return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    except (FileNotFoundError, NotADirectoryError):
        if not require:
            return "unprepared"
        raise DataError(f"{where}: datasets.{name}.root: {root} holds no prepared data (no manifest.json); run "
                        f"`harness data prepare {name} --out {root}` first") from None
    except OSError as exc:  # unreadable: permissions, a folder named manifest.json, ...
        raise DataError(f"{where}: datasets.{name}.root: {manifest} cannot be read ({exc.strerror or exc})") from None


def build_plan(dag: Dag, require_data: bool = True) -> list[Node]:
    """Every node of the DAG, stage by stage (pretrain, finetune, evaluate, attack, converge), inputs before users.

    With require_data=False a dataset that is not prepared yet still gets its nodes (for `harness plan`); their
    keys change once it is, so nothing is taken from the store for them."""
    spec = dag.config
    nodes: list[Node] = []
    finetuned: dict[tuple, Node] = {}
    for ds_name, ds in spec.datasets.items():
        fingerprint = _fingerprint(ds.root, dag.path, ds_name, require_data)
        data = ds.model_dump(exclude={"sizes", "finetune", "tasks"})  # what the stages read; the rest is the plan's
        tasks = {name: {"name": name, **opts} for name, opts in spec.task_options(ds_name).items()}
        for backbone in spec.backbones:
            for seed in spec.seeds:
                base = {"backbone": backbone, "seed": seed, "device": spec.device, "weights": spec.weights,
                        "data": data}
                axes = {"dataset": ds_name, "backbone": backbone, "seed": seed}
                pre_key = None
                if spec.weights is None:
                    cfg = {**base, "pretrain": spec.pretrain.model_dump()}
                    keyed = {k: v for k, v in cfg.items() if k != "device"}
                    # the manifest's hash names the data, not the folder it sits in
                    keyed["data"] = {k: v for k, v in data.items() if k not in ("root", "target_classes", "db_limit")}
                    pre_key = digest({"stage": "pretrain", "config": keyed, "dataset": ds_name, "data": fingerprint})
                    nodes.append(Node("pretrain", pre_key, f"pretrain {ds_name}/{backbone}/s{seed}", dict(axes), cfg))
                for task in tasks:
                    for rule in spec.rules:
                        finetune = spec.finetune_for({**axes, "task": task, "rule": rule}).model_dump()
                        cfg = {**base, "task": tasks[task], "finetune": finetune, "rule": rule}
                        keyed = {k: v for k, v in cfg.items() if k != "device"}
                        keyed["data"] = {k: v for k, v in data.items() if k != "root"}
                        key = digest({"stage": "finetune", "config": keyed, "dataset": ds_name, "data": fingerprint,
                                      "pretrained": pre_key})
                        ft = Node("finetune", key, f"finetune {ds_name}/{backbone}/{task}/{rule}/s{seed}",
                                  {**axes, "task": task, "rule": rule}, cfg,
                                  {"pretrained": pre_key} if pre_key else {})
                        nodes.append(ft)
                        finetuned[(ds_name, backbone, seed, task, rule)] = ft
    for ft in [n for n in nodes if n.stage == "finetune"]:
        cfg = spec.evaluate.model_dump()
        nodes.append(Node("evaluate", digest({"stage": "evaluate", "config": cfg, "model": ft.key}),
                          ft.label.replace("finetune", "evaluate", 1), dict(ft.axes), cfg, {"model": ft.key}))
    for ft in [n for n in nodes if n.stage == "finetune"]:
        a = ft.axes
        for atk in spec.attacks:
            if a["task"] not in atk.tasks or a["rule"] not in atk.rules:
                continue
            for source in atk.crafting_sources():
                cfg = {"attack": atk.name, "source": source, "eps": atk.eps, "n": atk.n,
                       "batch_size": atk.batch_size, "params": atk.params.model_dump(), "device": spec.device}
                inputs = {"model": ft.key}
                if source == "transfer":
                    inputs["sibling"] = finetuned[(a["dataset"], a["backbone"], a["seed"], a["task"], "bp")].key
                keyed = {k: v for k, v in cfg.items() if k != "device"}
                key = digest({"stage": "attack", "config": keyed, "inputs": inputs})
                label = f"attack {atk.name}/{source or 'query'} on {a['task']}/{a['rule']} " \
                        f"{a['dataset']}/{a['backbone']}/s{a['seed']}"
                nodes.append(Node("attack", key, label, {**a, "attack": atk.name, "source": source or "none"},
                                  cfg, inputs))
    if spec.converge is not None:
        nodes += _converge_nodes(spec, [n for n in nodes if n.stage == "finetune"],
                                 [n for n in nodes if n.stage == "attack"])
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(nodes, key=lambda n: order[n.stage])  # stable: keeps grid order within a stage


def _converge_nodes(spec, finetuned: list[Node], attacks: list[Node]) -> list[Node]:
    """One convergence re-run per model whose task has a primary budget, reading every L-inf attack on it."""
    from workloads.attacks import get_attack
    from workloads.tasks import get_task

    conv, out = spec.converge, []
    for ft in finetuned:
        a = ft.axes
        eps = spec.verdicts.primary.get(a["task"])
        if eps is None or get_task(a["task"]).kind not in get_attack(conv.attack).tasks:
            continue
        evidence = [n for n in attacks if n.inputs["model"] == ft.key
                    and get_attack(n.config["attack"]).norm_of(n.config["params"]) == "linf"]
        if not evidence:
            continue
        cfg = {"attack": conv.attack, "source": "exact", "eps": [eps], "n": max(n.config["n"] for n in evidence),
               "batch_size": conv.batch_size, "params": conv.params, "device": spec.device}
        inputs = {"model": ft.key, **{f"evidence {i}": n.key for i, n in enumerate(evidence)}}
        keyed = {k: v for k, v in cfg.items() if k != "device"}
        label = f"converge {conv.attack}/exact on {a['task']}/{a['rule']} {a['dataset']}/{a['backbone']}/s{a['seed']}"
        out.append(Node("converge", digest({"stage": "converge", "config": keyed, "inputs": inputs}), label,
                        {**a, "attack": RERUN + conv.attack, "source": "exact"}, cfg, inputs))
    return out
