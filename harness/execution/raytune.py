"""Ray and Ray Tune, set up once for every command that runs trials (`harness run` and `harness search`).

- `init_ray`: a local instance on 127.0.0.1 with a private token, or a cluster address probed first; the job ships
  the user's plugins to every worker (`runtime_env`);
- `run_trials`: one Tune run, as the DAG's trial settings say (harness/config/trials.py): resources per trial (a
  GPU share only where the cluster has GPUs), threads capped to the trial's CPUs, Tune's retries for a worker that
  died, storage in the run's store (a folder, or an object store every node reaches: workloads/storage.py), one
  progress line per trial event, and Ctrl-C, SIGTERM or SIGHUP stopping the trials at Tune's next step
  (harness/execution/interrupts.py).
Trials report with `ray.tune.report`; Ray is imported only when a function here is called.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.config.plugins import shipped
from harness.config.trials import TrialSettings
from harness.execution import interrupts
from workloads.errors import ConfigError, ServiceError

Log = Callable[[str], None]


def init_ray(address: str | None, log: Log, plugins: list[str] | None = None) -> None:
    """Ray for this process: the cluster at `address` (or RAY_ADDRESS), else a local instance. `plugins` (module
    names) travel with the job, so every worker can import them."""
    # Tune's console reporter (boxes, tables, TensorBoard hints) would drown the one-line progress printed here;
    # the legacy engine honours verbose=0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    if ray.is_initialized():
        if plugins:
            log("[ray] already started in this process: its job ships what it shipped then, not these plugins")
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
              "logging_level": "ERROR"}
    modules = shipped(plugins or [])
    if modules:
        kwargs["runtime_env"] = {"py_modules": modules}
        log(f"[ray] shipping plugins to the workers: {', '.join(modules)}")
    if address:
        log(f"[ray] connecting to {address}")
        _probe_gcs(address)
    on_sigterm = signal.getsignal(signal.SIGTERM)
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
        raise ServiceError(f"cannot reach the Ray cluster at {address or 'a local instance'}: {exc}. Check --address "
                           "or RAY_ADDRESS, and on a token-authenticated cluster RAY_AUTH_MODE=token with "
                           "RAY_AUTH_TOKEN (see README)") from None
    _keep_handler(signal.SIGTERM, on_sigterm)


def _keep_handler(sig: signal.Signals, handler: object) -> None:
    """Ray's core worker installs a C++ handler for SIGTERM that prints a stack and aborts the driver; the
    command's own handler (harness/execution/interrupts.py: stop as on Ctrl-C) goes back in its place."""
    if handler is not None:  # None: a handler not installed from Python, nothing of ours to restore
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread: nothing was ours to restore
            pass


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
    waited (results/bench/NOTES.md) instead of failing."""
    import socket

    if "://" in address or address == "auto" or ":" not in address:
        return  # ray:// clients and `auto` fail fast on their own
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except ValueError:
        raise ConfigError(f"Ray address {address!r}: expected HOST:PORT, e.g. 10.0.0.1:6379") from None
    except OSError as exc:
        raise ServiceError(f"cannot reach the Ray cluster at {address}: nothing answers there "
                           f"({exc.strerror or exc}). Check --address or RAY_ADDRESS; `ray status` on the head "
                           "node prints the address") from None


def trial_resources(settings: TrialSettings, group: str, log: Log) -> dict:
    """{cpu, gpu} for one trial of resource group `group`; a GPU request on a cluster without GPUs runs on CPU
    instead of waiting forever without an error."""
    import ray

    want = settings.resources_of(group)
    have_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if want.gpu > 0 and not have_gpu:
        log(f"[{group}] resources ask for {want.gpu} GPU but the Ray cluster has none: running on CPU")
    return {"cpu": want.cpu, "gpu": want.gpu if have_gpu else 0}


def run_trials(name: str, trainable: Callable, space: dict, *, stage: str, total: int, settings: TrialSettings,
               storage: str | Path, log: Log, resources: str | None = None,
               describe: Callable[[Any, dict], str | None] | None = None, label: Callable[[Any], str] | None = None,
               trial_name: Callable[[Any], str] | None = None, constants: dict | None = None, **tune_config: Any):
    """One Ray Tune run of `trainable(config, threads=..., **constants)` over `space`; returns Tune's ResultGrid.

    `stage` names the run in progress lines; its trials take the resources of group `resources` (default: the
    stage's name). `constants` travel once through Ray's object store (`tune.with_parameters`), so per-trial
    configs stay small. `describe(trial, result)` turns a reported result into a progress line (None: no line);
    `label(trial)` names a trial in the lines. `tune_config` goes to TuneConfig (metric, mode, scheduler,
    num_samples, ...)."""
    from ray import tune

    res = trial_resources(settings, resources or stage, log)
    wrapped = tune.with_resources(
        tune.with_parameters(trainable, threads=max(1, int(res["cpu"])), **(constants or {})), res)
    names = {"trial_name_creator": trial_name, "trial_dirname_creator": trial_name} if trial_name else {}
    where = _storage(storage)
    tuner = tune.Tuner(
        wrapped, param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=settings.max_concurrent or None, **names, **tune_config),
        run_config=tune.RunConfig(name=name, **where, verbose=0, stop=_on_signal(),
                                  failure_config=tune.FailureConfig(max_failures=settings.retries),
                                  callbacks=[_progress(stage, total, label or (lambda t: t.trial_id), describe, log)]),
    )
    with interrupts.graceful():  # Ctrl-C, SIGTERM, SIGHUP stop the trials, then raise once fit() has returned
        return tuner.fit()


def _on_signal():
    """Tune's stopper for harness/execution/interrupts.py: every trial stops once a signal asked the run to."""
    from ray.tune import Stopper

    class OnSignal(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return interrupts.requested() is not None

        def stop_all(self) -> bool:
            return interrupts.requested() is not None

    return OnSignal()


def _storage(location: str | Path) -> dict:
    """RunConfig's storage for a path or a URI: pyarrow ignores AWS_ENDPOINT_URL, so a URI's options (an S3
    endpoint) reach Tune only in the filesystem built from it, handed over whole."""
    from workloads import storage

    if not storage.is_remote(str(location)):
        return {"storage_path": str(Path(location).resolve())}
    fs, path = storage.filesystem(str(location))
    return {"storage_path": path, "storage_filesystem": fs}


def _progress(stage: str, total: int, label: Callable[[Any], str], describe, log: Log):
    from ray.tune import Callback

    class Progress(Callback):
        """`[stage N/TOTAL done] trial: ...` for each result worth a line, each trial that ended, retried or failed."""

        def __init__(self) -> None:
            self.done = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ARG002
            line = describe(trial, result) if describe else None
            if line:
                log(f"[{stage} {self.done}/{total} done] {label(trial)}: {line}")

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ARG002
            self.done += 1
            log(f"[{stage} {self.done}/{total} done] {label(trial)}")

        def on_trial_recover(self, iteration, trials, trial, **info):  # noqa: ARG002
            # a worker or node died under the trial: Tune starts it again (FailureConfig), from scratch
            log(f"[{stage} {self.done}/{total} done] RETRYING {label(trial)}: its worker died")

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ARG002
            self.done += 1
            log(f"[{stage} {self.done}/{total} done] FAILED {label(trial)}")

    return Progress()
