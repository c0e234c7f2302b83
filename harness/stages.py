"""One stage node, run to completion: read its inputs from the store, call the workloads' stage function, write
its artifact and result. No Ray here: the orchestrator wraps `run_node` as a Tune trainable, and tests and
notebooks can call it directly.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from harness.store import ArtifactStore

Report = Callable[[dict], None]


def run_node(node: dict, store: ArtifactStore, report: Report | None = None, where: dict | None = None) -> dict:
    """Run `node` (a `harness.plan.Node` as a dict) unless its result is already in the store; return the record.

    `where` (e.g. the Ray node id) is kept in the record, so a run on a cluster says where each node ran."""
    stage, key = node["stage"], node["key"]
    if store.done(stage, key):  # a retried trial whose first attempt finished just before dying
        return store.result(stage, key)
    report = report or (lambda metrics: None)
    t0 = time.perf_counter()
    runner = {"pretrain": _pretrain, "finetune": _finetune, "evaluate": _evaluate, "attack": _attack}[stage]
    result = runner(node, store, report)
    record = {"node": node, "result": result, "seconds": time.perf_counter() - t0,
              "where": {"host": socket.gethostname(), **(where or {})}}
    store.write_result(stage, key, record)
    return record


def _epoch_reporter(report: Report, epochs: int) -> Callable[[int, dict], None]:
    def on_epoch(epoch: int, row: dict) -> None:
        report({"epoch": epoch + 1, "epochs": epochs, "loss": row["loss"]})

    return on_epoch


def _trained(path, extra: dict | None = None) -> dict:
    from workloads.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return {"metrics": ckpt["metrics"], "history": ckpt["history"], **(extra or {})}


def _pretrain(node: dict, store: ArtifactStore, report: Report) -> dict:
    from workloads.train import pretrain

    cfg = node["config"]
    out = pretrain(cfg, store.model_path("pretrain", node["key"]), progress=False,
                   on_epoch=_epoch_reporter(report, cfg["pretrain"]["epochs"]))
    return _trained(out)


def _finetune(node: dict, store: ArtifactStore, report: Report) -> dict:
    from workloads.train import finetune

    cfg = node["config"]
    pre = node["inputs"].get("pretrained")
    out = finetune(store.model_path("pretrain", pre) if pre else None, cfg["rule"], cfg,
                   store.model_path("finetune", node["key"]), progress=False,
                   on_epoch=_epoch_reporter(report, cfg["finetune"]["epochs"]))
    return _trained(out)


def _evaluate(node: dict, store: ArtifactStore, report: Report) -> dict:
    """Clean metrics on the whole target test split, plus the rule's diagnostics: B-W angle per layer and the
    cosine between the rule's and the exact input gradient."""
    from workloads.attacks import gradient_cosine
    from workloads.checkpoint import load_checkpoint
    from workloads.train import evaluate_loaded, load_model, make_reader, resolve_device, split_names

    path = store.model_path("finetune", node["inputs"]["model"])
    device = resolve_device(load_checkpoint(path)["config"]["device"])
    loaded = load_model(path, device)
    cfg = loaded.config
    metrics = evaluate_loaded(loaded, device)
    report({"evaluated": 1})
    _, test_split, _ = split_names(cfg["data"]["root"])
    n = int(node["config"]["diagnostic_images"])
    batches = list(make_reader(cfg, test_split, cfg["data"].get("target_classes"), n, False, min(n, 250),
                               int(cfg["seed"])))
    layers = loaded.handle.diagnostics()
    cosine = gradient_cosine(loaded, batches)
    angles = [r["angle_deg"] for r in layers]
    return {"metrics": metrics, "diagnostics": {**cosine, "angle_mean_deg": sum(angles) / len(angles),
                                                 "layers": layers}}


def _attack(node: dict, store: ArtifactStore, report: Report) -> dict:
    from workloads.attacks import attack_checkpoint
    from workloads.train import resolve_device

    cfg, inputs = node["config"], node["inputs"]
    sibling = store.model_path("finetune", inputs["sibling"]) if "sibling" in inputs else None
    total = len(cfg["eps"])
    done = []

    def on_row(row: dict) -> None:
        done.append(row)
        metric = "map" if "map" in row else "robust_acc"
        report({"eps": row["eps"], "point": len(done), "points": total, metric: row[metric]})

    source = None if cfg["source"] in (None, "none") else cfg["source"]
    device = str(resolve_device(cfg["device"]))
    return attack_checkpoint(store.model_path("finetune", inputs["model"]), cfg["attack"], source, cfg["eps"],
                             # the gradient cosine is the evaluate stage's, once per model, not once per attack
                             {"n": cfg["n"], "batch_size": cfg["batch_size"], "params": cfg["params"],
                              "device": device, "diagnostics": False}, sibling=sibling, on_row=on_row)
