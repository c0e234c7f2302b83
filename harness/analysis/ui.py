"""`harness ui EXPERIMENT`: the MLflow UI on an experiment's store, listening on 127.0.0.1, and its address.

A run writes to runs/EXPERIMENT/mlflow.db (sqlite) with artifacts beside it; `mlflow ui` needs the right
`--backend-store-uri` and a free port, and lands on the experiment list rather than the experiment. This starts it
with both, waits until it answers, prints the experiment's address (and one comparing the last two runs of the
grid), and keeps serving until Ctrl-C, SIGTERM or SIGHUP, which stop the server with all its workers. Only
127.0.0.1 unless the user passes --host.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from harness.execution.tracking import existing_store
from workloads.errors import InputError, ServiceError

STARTUP_S = 120.0  # gunicorn/uvicorn and MLflow's imports take 5-20 s on a loaded 2-core machine


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def _search(base: str, exp_id: str, filter_string: str, max_results: int) -> list[dict]:
    body = json.dumps({"experiment_ids": [exp_id], "filter": filter_string, "max_results": max_results,
                       "order_by": ["attributes.start_time DESC"]}).encode()
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read()).get("runs", [])


def addresses(base: str, experiment: str) -> dict[str, str]:
    """The experiment's page and, per task, its latest run's fine-tuning runs side by side (the rules compared)."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    try:
        exp = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise InputError(f"the store has no experiment {experiment!r}; the name `harness run` printed is the "
                             "DAG's `experiment`") from None
        raise
    exp_id = exp["experiment_id"]
    out = {"experiment": f"{base}/#/experiments/{exp_id}"}
    latest = _search(base, exp_id, "tags.`harness.kind` = 'run'", 1)
    if not latest:
        return out
    parent = latest[0]["info"]["run_id"]
    by_task: dict[str, list[str]] = {}
    for run in reversed(_search(base, exp_id, f"tags.`harness.stage` = 'finetune' and "
                                f"tags.`mlflow.parentRunId` = '{parent}'", 1000)):  # in the order they ran
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        by_task.setdefault(tags.get("axis.task", "?"), []).append(run["info"]["run_id"])
    for task, ids in by_task.items():
        if len(ids) >= 2:
            compare = urllib.parse.urlencode({"runs": json.dumps(ids, separators=(",", ":")),
                                              "experiments": json.dumps([exp_id])})
            out[f"{task} fine-tuning compared"] = f"{base}/#/compare-runs?{compare}"
    return out


def start(uri: str, host: str = "127.0.0.1", port: int = 5000) -> tuple[subprocess.Popen, str]:
    """`mlflow ui` on the store, once it answers: (the process, its base address)."""
    if not _port_free(host, port):
        raise ServiceError(f"port {port} on {host} is taken (another MLflow UI?): pass --port with a free one")
    # each experiment the harness creates names its own artifact location, so no --default-artifact-root
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    # its own process group: `mlflow ui` runs a server and worker processes of its own, and stopping the group
    # stops them all, where terminating the one process we started would leave its workers serving
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"`mlflow ui` exited with code {proc.returncode}: "
                               f"{(proc.stderr.read() or '').strip()[-800:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return proc, base
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    stop(proc)
    raise ServiceError(f"`mlflow ui` did not answer on {base} within {STARTUP_S:.0f} s")


def serve(experiment: str, tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000,
          log: Callable[[str], None] = print) -> int:
    uri = existing_store(experiment, tracking_uri)
    if uri.startswith(("http://", "https://")):  # a tracking server is its own UI: its addresses, nothing started
        from harness.execution.tracking import probe_server

        probe_server(uri)
        for what, url in addresses(uri.rstrip("/"), experiment).items():
            log(f"{what}: {url}")
        return 0
    proc, base = start(uri, host, port)
    try:
        for what, url in addresses(base, experiment).items():
            log(f"{what}: {url}")
        log("serving until Ctrl-C")
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM or SIGHUP (harness/cli.py turns them into this)
        return 0
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL what is left after `timeout` seconds."""
    import os
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the leader is gone; its workers may take a moment longer
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
