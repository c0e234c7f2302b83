"""`harness run`: the DAG's stages in the order their levels run, each one Ray Tune run over the nodes not yet in
the artifact store.

pretrain -> finetune -> evaluate -> attack -> converge, and any stage a plugin registers. A node whose result is
in the store is skipped (that is the cache and the resume: run the same command again after a crash). A stage that
raises is recorded as FAILED (in the store and MLflow, with its traceback when it is a bug), the nodes that need it
are skipped, every other node still runs, and the exit code says so; a trial whose worker died is retried
`retries` times by Tune's FailureConfig. The report is the analysis room's (harness/commands/run.py writes it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import plugins
from harness.execution.raytune import init_ray, run_trials
from harness.execution.store import ArtifactStore
from harness.execution.tracking import Tracker, default_uri
from harness.planning.dag import Dag
from harness.planning.plan import build_plan
from harness.stages import STAGES, Node, digest, ordered
from workloads import storage
from workloads.errors import ConfigError, HarnessError

Log = Callable[[str], None]


@dataclass
class RunSummary:
    experiment: str
    out_dir: str
    tracking_uri: str
    ran: dict = field(default_factory=lambda: {s.name: 0 for s in ordered()})
    cached: dict = field(default_factory=lambda: {s.name: 0 for s in ordered()})
    failed: dict = field(default_factory=dict)  # key -> (label, error)
    skipped: dict = field(default_factory=dict)  # key -> label
    seconds: float = 0.0
    parent_run: str | None = None  # the MLflow run of this `harness run`
    results: list = field(default_factory=list)  # every node's result.json, once all finished

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _trainable(config: dict, nodes: dict, store_root: str, plugin_names: list[str], threads: int) -> None:
    """The Tune trainable: one node per trial, threads capped to the trial's CPUs, the user's plugins imported."""
    import ray
    import torch
    from ray import tune

    from harness.execution.allocator import keep_freed_memory
    from harness.execution.runner import run_node

    keep_freed_memory()
    torch.set_num_threads(threads)
    store = ArtifactStore(store_root)
    node = nodes[config["key"]]
    try:
        plugins.load_plugins(plugin_names)  # inside: a plugin that fails here fails its node, not its worker
        record = run_node(node, store, progress=lambda m: tune.report({**m, "final": 0}),
                          where={"ray_node_id": ray.get_runtime_context().get_node_id()})
    except Exception as exc:  # noqa: BLE001  (any error of the stage: recorded, never raised into Tune)
        _failed(store, node.stage, node.key, exc)
        return
    tune.report({"final": 1, "failed": 0, "seconds": record["seconds"]})


def _failed(store: ArtifactStore, stage: str, key: str, exc: Exception) -> None:
    """An exception inside a stage is as good as deterministic (bad data, a bug, a diverging loss): a retry cannot
    fix it, so it is recorded and the trial ends. Tune's retries are kept for what a retry can fix: a worker or a
    node that died. A user error is its one line; anything else is a bug and keeps its traceback."""
    import traceback

    from ray import tune

    error = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    if not isinstance(exc, HarnessError):
        error += "\n" + "".join(traceback.format_exception(exc))
    store.write_failure(stage, key, error)
    tune.report({"final": 1, "failed": 1, "error": error[:2000]})


def _describe(result: dict) -> str | None:
    """A progress line for a trial's report: an epoch of training, or an eps point of an attack."""
    if result.get("final"):
        return None
    if "epoch" in result:
        return f"epoch {result['epoch']}/{result['epochs']} loss {result['loss']:.4f}"
    if "point" in result:
        metric = result["metric"]
        return f"eps {result['eps']:g} ({result['point']}/{result['points']}) {metric} {result[metric]:.4f}"
    return None


def run_level(dag: Dag, stage: str, nodes: list[Node], store: ArtifactStore, tune_storage: str, log: Log) -> dict:
    """Run `nodes` as one Tune run; returns key -> error for the nodes that did not finish."""
    from ray import tune

    labels = {n.key: n.label for n in nodes}
    grid = run_trials(
        f"{stage}-{digest(sorted(labels))}", _trainable, {"key": tune.grid_search([n.key for n in nodes])},
        stage=stage, resources=STAGES.get(stage).group, total=len(nodes), settings=dag.config,
        storage=tune_storage, log=log,
        # the grid is over node keys only and the nodes travel once through the object store: Tune's per-trial
        # configs (written to every trial folder and to the experiment state) stay small
        constants={"nodes": {n.key: n for n in nodes}, "store_root": str(store.root),
                   "plugin_names": plugins.loaded()},
        describe=lambda trial, result: _describe(result), label=lambda t: labels.get(t.config["key"], t.trial_id),
        trial_name=lambda t: f"{stage}-{t.config['key']}", reuse_actors=True)
    errors = {}
    for result in grid:
        key = result.config["key"]
        if result.error is not None:
            errors[key] = _error_text(result.error)
        elif not store.done(stage, key):
            errors[key] = store.failure(stage, key) or (result.metrics or {}).get("error") or "no result written"
    return errors


def _error_text(error: BaseException) -> str:
    text = str(error).strip()
    # Tune wraps the trial's exception; keep the last line of the original traceback, which names the cause
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:2000]


def locations(dag: Dag, out_dir: str | Path | None, store: str | None) -> tuple[Path, str]:
    """(the driver's run folder, the store's root): --out (default runs/EXPERIMENT) holds the MLflow sqlite store
    and logs; --store (default: the DAG's `store`, else the run folder) the node folders and Tune's storage."""
    out = Path(out_dir or Path("runs") / dag.experiment).resolve()
    root = store or dag.config.store or str(out)
    return out, storage.check(root, "--store" if store else f"{dag.path}: store")


def _check_weights(dag: Dag) -> None:
    """`weights: imagenet` or a file must be there before anything runs, not discovered by a trial hours later."""
    from workloads import backbones

    w = dag.config.weights
    if w is None:
        return
    for name in dag.config.backbones:
        if w == "imagenet" and backbones.imagenet_weights_file(name) is None:
            raise ConfigError(f"{dag.path}: weights: imagenet, but torchvision's {name} ImageNet weights are not in "
                              "the local torch hub cache; download them once (torchvision.models."
                              f"get_weight(...)) or set weights: null to pretrain with BP")
        if w != "imagenet" and not Path(w).is_file():
            raise ConfigError(f"{dag.path}: weights: {w} does not exist")


def run_dag(dag: Dag, out_dir: str | Path | None = None, tracking_uri: str | None = None, address: str | None = None,
            log: Log = _log_stderr, store: str | None = None) -> RunSummary:
    """Run what the DAG needs, logging every node to MLflow under one parent run (`RunSummary.parent_run`).
    `store` (default: the DAG's `store`, else the run folder) holds the artifact store and Tune's storage."""
    t0 = time.perf_counter()
    out, root = locations(dag, out_dir, store)
    artifacts = ArtifactStore(storage.join(root, "store"))
    artifacts.check_writable()
    nodes = build_plan(dag)  # checks every dataset is prepared: before any compute
    _check_weights(dag)
    uri = tracking_uri or default_uri(out)
    tracker = Tracker(uri, dag.experiment, artifact_root=out / "mlartifacts")
    summary = RunSummary(dag.experiment, str(out), uri)
    logged = tracker.logged_keys()
    summary.parent_run = tracker.start_parent(
        f"run {time.strftime('%Y-%m-%d %H:%M:%S')}",
        {"dag": dag.path, "nodes": len(nodes), "verdicts": dag.config.verdicts.model_dump(),
         "baseline": dag.config.baseline, "plugins": plugins.loaded()}, {"harness.dag": dag.path})
    status = "FAILED"
    try:
        if any(not artifacts.done(n.stage, n.key) for n in nodes):
            init_ray(address, log, plugins.loaded())
        for stage in ordered():
            _run_stage(dag, stage.name, [n for n in nodes if n.stage == stage.name], artifacts,
                       storage.join(root, "tune"), tracker, logged, summary, log)
        status = "FINISHED" if summary.ok else "FAILED"
        if summary.ok:
            summary.results = [artifacts.location(n.stage, n.key, "result.json") for n in nodes]
    finally:
        summary.seconds = time.perf_counter() - t0
        tracker.end_parent(status, {"seconds": summary.seconds, "failed": len(summary.failed),
                                    "skipped": len(summary.skipped),
                                    **{f"ran/{s}": v for s, v in summary.ran.items()},
                                    **{f"cached/{s}": v for s, v in summary.cached.items()}},
                           {"plan.json": [n.to_dict() for n in nodes]})
    return summary


def _run_stage(dag: Dag, stage: str, level: list[Node], store: ArtifactStore, tune_storage: str,
               tracker: Tracker, logged: set[str], summary: RunSummary, log: Log) -> None:
    """One level: its nodes not in the store run as one Tune run; every node not yet in MLflow is logged."""
    if not level:
        return
    blocked = {n.key for n in level if any(k in summary.failed or k in summary.skipped for k in n.inputs.values())}
    todo = [n for n in level if n.key not in blocked and not store.done(stage, n.key)]
    todo_keys = {n.key for n in todo}
    log(f"[{stage}] {len(level)} nodes: {len(level) - len(todo) - len(blocked)} cached, {len(todo)} to run"
        + (f", {len(blocked)} skipped (an input failed)" if blocked else ""))
    for n in todo:
        store.clear_failure(stage, n.key)
    errors = run_level(dag, stage, todo, store, tune_storage, log) if todo else {}
    artifacts = STAGES.get(stage).artifacts
    for n in level:
        if n.key in blocked:
            summary.skipped[n.key] = n.label
        elif n.key in errors:
            summary.failed[n.key] = (n.label, errors[n.key])
            log(f"[{stage}] FAILED {n.label}: {errors[n.key]}")
            tracker.log_node(n, None, error=errors[n.key])
        else:
            ran = n.key in todo_keys
            (summary.ran if ran else summary.cached)[stage] += 1
            if n.key not in logged:
                tracker.log_node(n, store.result(stage, n.key), cached=not ran,
                                 files=store.files_of(stage, n.key, artifacts))
