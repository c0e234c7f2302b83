"""`harness run`: the DAG's stage levels, each one Ray Tune run over the nodes not yet in the artifact store.

pretrain -> finetune -> evaluate -> attack. A node whose result is in the store is skipped (that is the cache and
the resume: run the same command again after a crash). A trial that raises is retried `retries` times by Tune's
FailureConfig; a node that still fails is reported and logged to MLflow as FAILED, the nodes that need it are
skipped, every other node still runs, and the exit code says so.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.dag import STAGES, Dag
from harness.errors import HarnessError
from harness.plan import Node, build_plan, digest
from harness.store import ArtifactStore
from harness.tracking import Tracker, default_uri

Log = Callable[[str], None]


@dataclass
class RunSummary:
    experiment: str
    out_dir: str
    tracking_uri: str
    ran: dict = field(default_factory=lambda: {s: 0 for s in STAGES})
    cached: dict = field(default_factory=lambda: {s: 0 for s in STAGES})
    failed: dict = field(default_factory=dict)  # key -> (label, error)
    skipped: dict = field(default_factory=dict)  # key -> label
    seconds: float = 0.0
    report: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def init_ray(address: str | None, log: Log) -> None:
    # Tune's console reporter (boxes, tables, TensorBoard hints) would drown the one-line progress printed here;
    # the legacy engine honours verbose=0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
              "logging_level": "ERROR"}
    if address:
        log(f"[ray] connecting to {address}")
        _probe_gcs(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            log("[ray] starting a local Ray instance on 127.0.0.1")
            # Ray swaps a loopback node address for the machine's routable one (and then binds its GCS, raylet
            # and workers to every interface) unless this flag is off; off, every server it starts listens on
            # 127.0.0.1 only. Only for a local instance: a cluster node must advertise a reachable address.
            import ray._private.ray_constants as ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
            _private_token(log)
            ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise HarnessError(f"cannot reach the Ray cluster at {address or 'a local instance'}: {exc}. Check --address "
                           "or RAY_ADDRESS, and on a token-authenticated cluster RAY_AUTH_MODE=token with "
                           "RAY_AUTH_TOKEN (see README)") from None


def _private_token(log: Log) -> None:
    """Ray 2.59+ protects a local instance with the token in ~/.ray/auth_token, but writes that file with the
    umask's mode (0644: every local user can read it, then connect and run code as us). Create it 0600 ourselves
    before Ray does, or tighten a readable one we own."""
    import secrets

    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))  # the form Ray's own generator uses: 64 hex characters
        elif path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(0o600)
            log(f"[ray] {path} was readable by other users; it is now 0600 (it lets its reader run code in Ray)")
    except OSError as exc:  # a read-only home: Ray decides what to do without a token file
        log(f"[ray] could not secure {path}: {exc}")


def _probe_gcs(address: str, timeout: float = 10.0) -> None:
    """A TCP connect to HOST:PORT first: ray.init retries an address where nothing listens for as long as we
    waited (over ten minutes here) instead of failing."""
    import socket

    if "://" in address or address == "auto" or ":" not in address:
        return  # ray:// clients and `auto` fail fast on their own
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except ValueError:
        raise HarnessError(f"Ray address {address!r}: expected HOST:PORT, e.g. 10.0.0.1:6379") from None
    except OSError as exc:
        raise HarnessError(f"cannot reach the Ray cluster at {address}: nothing answers there "
                           f"({exc.strerror or exc}). Check --address or RAY_ADDRESS; `ray status` on the head "
                           "node prints the address") from None


def _trainable(config: dict, nodes: dict, store_root: str, threads: int) -> None:
    """The Tune trainable: one node per trial, threads capped to the trial's CPUs."""
    import torch
    from ray import tune

    from harness.runtime import tune_allocator
    from harness.stages import run_node

    tune_allocator()
    torch.set_num_threads(threads)
    store = ArtifactStore(store_root)
    node = nodes[config["key"]]
    import ray

    try:
        record = run_node(node, store, report=lambda m: tune.report({**m, "final": 0}),
                          where={"ray_node_id": ray.get_runtime_context().get_node_id()})
    except Exception as exc:  # noqa: BLE001  (any error of the stage: recorded, never raised into Tune)
        _failed(store, node, f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
        return
    tune.report({"final": 1, "failed": 0, "seconds": record["seconds"]})


def _failed(store: ArtifactStore, node: dict, error: str) -> None:
    """An exception inside a stage is as good as deterministic (bad data, a bug, a diverging loss): a retry cannot
    fix it, so it is recorded and the trial ends. Tune's retries are kept for what a retry can fix: a worker or a
    node that died."""
    from ray import tune

    store.write_failure(node["stage"], node["key"], error)
    tune.report({"final": 1, "failed": 1, "error": error[:2000]})


def _progress_callback(stage: str, total: int, labels: dict[str, str], log: Log):
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self) -> None:
            self.done = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            label = labels.get(trial.config["key"], trial.trial_id)
            if result.get("final"):
                return
            if "epoch" in result:
                log(f"[{stage} {self.done}/{total} done] {label}: epoch {result['epoch']}/{result['epochs']}"
                    f" loss {result['loss']:.4f}")
            elif "point" in result:
                metric = "map" if "map" in result else "robust_acc"
                log(f"[{stage} {self.done}/{total} done] {label}: eps {result['eps']:g} "
                    f"({result['point']}/{result['points']}) {metric} {result[metric]:.4f}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            log(f"[{stage} {self.done}/{total} done] {labels.get(trial.config['key'], trial.trial_id)}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            # a worker or node died under the trial: Tune starts it again (FailureConfig), from scratch
            log(f"[{stage} {self.done}/{total} done] RETRYING {labels.get(trial.config['key'], '?')}: its worker "
                "died")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            log(f"[{stage} {self.done}/{total} done] FAILED {labels.get(trial.config['key'], '?')}")

    return Progress()


def stage_resources(dag: Dag, stage: str, log: Log) -> dict:
    import ray

    want = dag["resources"][stage]
    have_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if want["gpu"] > 0 and not have_gpu:
        # a GPU request on a cluster without GPUs waits forever without an error; run on CPU instead
        log(f"[{stage}] resources ask for {want['gpu']} GPU but the Ray cluster has none: running on CPU")
    return {"cpu": want["cpu"], "gpu": want["gpu"] if have_gpu else 0}


def run_level(dag: Dag, stage: str, nodes: list[Node], store: ArtifactStore, out_dir: Path, log: Log) -> dict:
    """Run `nodes` as one Tune run; returns key -> error for the nodes that did not finish."""
    from ray import tune

    res = stage_resources(dag, stage, log)
    # the grid is over node keys only and the nodes travel once through the object store: Tune's per-trial
    # configs (written to every trial folder and to the experiment state) stay small
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, nodes={n.key: n.to_dict() for n in nodes}, store_root=str(store.root),
                             threads=max(1, int(res["cpu"]))), res)
    labels = {n.key: n.label for n in nodes}
    space = {"key": tune.grid_search([n.key for n in nodes])}
    name = f"{stage}-{digest(sorted(labels))}"
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=dag["max_concurrent"] or None, reuse_actors=True,
                                    trial_name_creator=lambda t: f"{stage}-{t.config['key']}",
                                    trial_dirname_creator=lambda t: f"{stage}-{t.config['key']}"),
        run_config=tune.RunConfig(name=name, storage_path=str((out_dir / "tune").resolve()),
                                  failure_config=tune.FailureConfig(max_failures=dag["retries"]), verbose=0,
                                  callbacks=[_progress_callback(stage, len(nodes), labels, log)]),
    )
    grid = tuner.fit()
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


def _check_weights(dag: Dag) -> None:
    """`weights: imagenet` or a file must be there before anything runs, not discovered by a trial hours later."""
    from workloads import backbones

    w = dag["weights"]
    if w is None:
        return
    for name in dag["backbones"]:
        if w == "imagenet" and backbones.imagenet_weights_file(name) is None:
            raise HarnessError(f"{dag.path}: weights: imagenet, but torchvision's {name} ImageNet weights are not in "
                               "the local torch hub cache; download them once (torchvision.models."
                               f"get_weight(...)) or set weights: null to pretrain with BP")
        if w != "imagenet" and not Path(w).is_file():
            raise HarnessError(f"{dag.path}: weights: {w} does not exist")


def _report(tracker: Tracker, experiment: str, results_dir: Path, log: Log) -> dict | None:
    from harness.report import write_report

    try:
        report = write_report(tracker.uri, experiment, results_dir)
    except HarnessError as exc:
        log(f"[report] not written: {exc}")
        return None
    tracker.log_report(results_dir)
    return report


def run_dag(dag: Dag, out_dir: str | Path | None = None, tracking_uri: str | None = None, address: str | None = None,
            results_dir: str | Path | None = None, log: Log = _log_stderr) -> RunSummary:
    """Run what the DAG needs; with `results_dir`, write the report there and attach it to the parent MLflow run."""
    t0 = time.perf_counter()
    out = Path(out_dir or Path("runs") / dag.experiment).resolve()
    store = ArtifactStore(out / "store")
    store.check_writable()
    nodes = build_plan(dag)  # checks every dataset is prepared: before any compute
    _check_weights(dag)
    uri = tracking_uri or default_uri(out)
    tracker = Tracker(uri, dag.experiment, artifact_root=out / "mlartifacts")
    summary = RunSummary(dag.experiment, str(out), uri)
    logged = tracker.logged_keys()
    tracker.start_parent(f"run {time.strftime('%Y-%m-%d %H:%M:%S')}", {"dag": dag.path, "nodes": len(nodes)},
                         {"harness.dag": dag.path})
    status = "FAILED"
    try:
        todo_any = any(not store.done(n.stage, n.key) for n in nodes)
        if todo_any:
            init_ray(address, log)
        for stage in STAGES:
            level = [n for n in nodes if n.stage == stage]
            if not level:
                continue
            blocked = {n.key for n in level if any(k in summary.failed or k in summary.skipped
                                                   for k in n.inputs.values())}
            todo = [n for n in level if n.key not in blocked and not store.done(stage, n.key)]
            todo_keys = {n.key for n in todo}
            log(f"[{stage}] {len(level)} nodes: {len(level) - len(todo) - len(blocked)} cached, {len(todo)} to run"
                + (f", {len(blocked)} skipped (an input failed)" if blocked else ""))
            for n in todo:
                store.clear_failure(stage, n.key)
            errors = run_level(dag, stage, todo, store, out, log) if todo else {}
            for n in level:
                if n.key in blocked:
                    summary.skipped[n.key] = n.label
                elif n.key in errors:
                    summary.failed[n.key] = (n.label, errors[n.key])
                    log(f"[{stage}] FAILED {n.label}: {errors[n.key]}")
                    tracker.log_node(n.to_dict(), None, error=errors[n.key])
                else:
                    ran = n.key in todo_keys
                    (summary.ran if ran else summary.cached)[stage] += 1
                    if n.key not in logged:
                        tracker.log_node(n.to_dict(), store.result(stage, n.key), cached=not ran)
        status = "FINISHED" if summary.ok else "FAILED"
        if results_dir is not None:
            summary.report = _report(tracker, dag.experiment, Path(results_dir), log)
    finally:
        summary.seconds = time.perf_counter() - t0
        tracker.end_parent(status, {"seconds": summary.seconds, "failed": len(summary.failed),
                                    "skipped": len(summary.skipped),
                                    **{f"ran/{s}": v for s, v in summary.ran.items()},
                                    **{f"cached/{s}": v for s, v in summary.cached.items()}},
                           {"plan.json": [n.to_dict() for n in nodes]})
    return summary
