"""One stage node, run to completion: read its inputs from the store, call the workloads' stage function, write
its artifact and result. No Ray here: the orchestrator wraps `run_node` as a Tune trainable, and tests and
notebooks can call it directly.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from harness.store import ArtifactStore

Progress = Callable[[dict], None]  # sees {"epoch", "epochs", "loss"} or {"eps", "point", "points", METRIC}


def run_node(node: dict, store: ArtifactStore, progress: Progress | None = None, where: dict | None = None) -> dict:
    """Run `node` (a `harness.plan.Node` as a dict) unless its result is already in the store; return the record.

    `where` (e.g. the Ray node id) is kept in the record, so a run on a cluster says where each node ran."""
    stage, key = node["stage"], node["key"]
    if store.done(stage, key):  # a retried trial whose first attempt finished just before dying
        return store.result(stage, key)
    progress = progress or (lambda metrics: None)
    here = {"host": socket.gethostname(), **(where or {})}
    store.write_running(stage, key, {"pid": os.getpid(), **here, "since": time.time()})
    t0 = time.perf_counter()
    runner = {"pretrain": _pretrain, "finetune": _finetune, "evaluate": _evaluate, "attack": _attack,
              "converge": _converge}[stage]
    try:
        result = runner(node, store, progress)
    except BaseException:
        store.clear_running(stage, key)  # it stopped: the caller records why (failed.json), or nothing if it must not
        raise
    record = {"node": node, "result": result, "seconds": time.perf_counter() - t0, "where": here}
    store.write_result(stage, key, record)
    return record


def _per_epoch(progress: Progress, epochs: int) -> Callable[[int, dict], None]:
    def on_epoch(epoch: int, row: dict) -> None:
        progress({"epoch": epoch + 1, "epochs": epochs, "loss": row["loss"]})

    return on_epoch


def _trained(path) -> dict:
    from workloads.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return {"metrics": ckpt["metrics"], "history": ckpt["history"]}


def _pretrain(node: dict, store: ArtifactStore, progress: Progress) -> dict:
    from workloads.train import pretrain

    cfg = node["config"]
    return _trained(pretrain(cfg, store.model_path("pretrain", node["key"]), progress=False,
                             on_epoch=_per_epoch(progress, cfg["pretrain"]["epochs"])))


def _finetune(node: dict, store: ArtifactStore, progress: Progress) -> dict:
    from workloads.train import finetune

    cfg = node["config"]
    pre = node["inputs"].get("pretrained")
    return _trained(finetune(store.model_path("pretrain", pre) if pre else None, cfg["rule"], cfg,
                             store.model_path("finetune", node["key"]), progress=False,
                             on_epoch=_per_epoch(progress, cfg["finetune"]["epochs"])))


def _evaluate(node: dict, store: ArtifactStore, progress: Progress) -> dict:
    from workloads.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(store.model_path("finetune", node["inputs"]["model"]), node["config"])
    progress({"evaluated": 1})
    return result


def _attack(node: dict, store: ArtifactStore, progress: Progress) -> dict:
    from workloads.attacks import attack_checkpoint, write_outcomes
    from workloads.settings import resolve_device
    from workloads.tasks import get_task

    cfg, inputs = node["config"], node["inputs"]
    sibling = store.model_path("finetune", inputs["sibling"]) if "sibling" in inputs else None
    metric = get_task(node["axes"]["task"]).attack_metric
    done = []

    def on_row(row: dict) -> None:
        done.append(row)
        progress({"eps": row["eps"], "point": len(done), "points": len(cfg["eps"]), "metric": metric,
                  metric: row[metric]})

    source = None if cfg["source"] in (None, "none") else cfg["source"]
    device = str(resolve_device(cfg["device"]))
    result = attack_checkpoint(store.model_path("finetune", inputs["model"]), cfg["attack"], source, cfg["eps"],
                               # the gradient cosine is the evaluate stage's, once per model, not once per attack
                               {"n": cfg["n"], "batch_size": cfg["batch_size"], "params": cfg["params"],
                                "device": device, "diagnostics": False}, sibling=sibling, on_row=on_row)
    write_outcomes(result.pop("outcomes"), store.outcomes_path(node["key"]))  # before result.json: it marks done
    return result


def _converge(node: dict, store: ArtifactStore, progress: Progress) -> dict:
    """The re-run on the images every L-inf attack on the model left robust at the primary budget (its `eps`)."""
    import polars as pl

    from harness.verdicts import survivors
    from workloads.attacks import attack_checkpoint, write_outcomes
    from workloads.settings import resolve_device

    cfg, inputs = node["config"], node["inputs"]
    evidence = [pl.read_parquet(store.outcomes_path(k)) for role, k in inputs.items() if role.startswith("evidence")]
    images = survivors(evidence, cfg["eps"][-1])
    if images:
        result = attack_checkpoint(store.model_path("finetune", inputs["model"]), cfg["attack"], "exact", cfg["eps"],
                                   {"n": cfg["n"], "batch_size": cfg["batch_size"], "params": cfg["params"],
                                    "device": str(resolve_device(cfg["device"])), "diagnostics": False,
                                    "images": images})
        outcomes = result.pop("outcomes")
    else:  # every image already broken: nothing to re-run, and an empty table says so
        outcomes = evidence[0].clear().select("image", "eps", "norm", "clean", "robust", "robust_raw", "linf", "l2",
                                              "invalid")
        result = {"attack": cfg["attack"], "source": "exact", "rows": [], "seconds": 0.0}
    result.update({"survivors": len(images), "broken": int((~outcomes["robust"]).sum())})
    progress({"eps": cfg["eps"][-1], "point": 1, "points": 1, "metric": "broken", "broken": result["broken"]})
    write_outcomes(outcomes, store.outcomes_path(node["key"], "converge"))  # before result.json: it marks done
    return result
