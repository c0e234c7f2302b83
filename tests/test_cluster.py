"""A cluster whose nodes share no disk, on this machine: a Ray head (no CPUs, so no trial runs there) and two worker
nodes, each in a mount namespace of its own where a tmpfs covers the driver's folder (its run folder and every file
it prepared), with their own working and temp directories; the store and the datasets on an S3-compatible server
(moto's), MLflow a tracking server on PostgreSQL with its artifacts proxied to S3. Any read of the driver's disk by a
trial fails the run. On it: the smoke DAG end to end, a plugin shipped with the job, a worker node killed in the
middle of fine-tuning, and the object store stopping mid-run. Every process is started here and stopped by pid (never
`ray stop`, which would stop other people's Ray).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from datagen import write_fmnist
from services import BIN, mlflow_server, postgres_bin, postgres_server, s3_server, stop_tree

from workloads import storage

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[1]
SMOKE_NODES = 25  # dags/smoke.yaml: pretrain 1, finetune 4, evaluate 4, attack 14, primary 2
SMALL = ["tasks={classification: {}}", "attacks=[{name: fgsm, sources: [rule, exact], eps: [0, 0.1], n: 8}]"]
SMALL_NODES = 1 + 2 + 2 + 4 + 1  # the smoke DAG with SMALL: pretrain, finetune, evaluate, attack, primary budget


@dataclass
class Cluster:
    address: str
    env: dict  # what the driver runs with: the cluster's token, the store's credentials
    s3: object
    tracking: str
    driver: Path  # hidden from every worker node
    base: Path
    secret: str
    workers: list[Path]
    ray_dirs: Path
    reference: dict = field(default_factory=dict)  # the undisturbed run's report tables, for the fault tests

    def harness(self, *args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", *args], cwd=self.driver, env=env or self.env,
                              capture_output=True, text=True, timeout=timeout)

    def run_args(self, experiment: str, store: str) -> list[str]:
        return ["run", str(ROOT / "dags" / "smoke.yaml"), "--address", self.address, "--tracking-uri", self.tracking,
                "--store", store, "--set", f"experiment={experiment}",
                "--set", f"datasets.fashion-mnist.root={self.s3.uri('harness/data/fm')}",
                "--out", str(self.driver / "out" / experiment), "--no-report"]


def _mount_namespace(hide: Path, cmd: list[str], cwd: Path) -> list[str]:
    """`cmd` in a new mount namespace where an empty tmpfs covers `hide` (root may; others map themselves)."""
    unshare = ["unshare", "-m", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-rm"]
    script = 'mount -t tmpfs -o size=1m tmpfs "$1" && cd "$2" && shift 2 && exec "$@"'
    return [*unshare, "sh", "-c", script, "sh", str(hide), str(cwd), *cmd]


def _raylet_of(pid: int):
    import psutil

    for p in psutil.Process(pid).parents():
        if p.name() == "raylet":
            return p
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if postgres_bin() is None:
        from conftest import require

        require("PostgreSQL", "apt-get install postgresql (.ci/run installs it)")
    base = tmp_path_factory.mktemp("cluster")
    driver = tmp_path_factory.mktemp("driver")
    (driver / "only-the-driver-sees-this").write_text("")
    secret = f"secret-{secrets.token_hex(12)}"  # searched for in everything the run leaves
    token = base / "auth_token"  # Ray 2.59+ authenticates with a token; this cluster gets its own
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    with ExitStack() as stack:
        s3 = stack.enter_context(s3_server(base, secret=secret))
        for bucket in ("harness", "mlflow"):
            s3.bucket(bucket)
        creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        env = {**os.environ, **creds, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
               "HARNESS_CACHE": str(base / "driver-cache")}
        backend = stack.enter_context(postgres_server())
        tracking = stack.enter_context(mlflow_server(
            base, backend, "s3://mlflow/artifacts", {**env, "MLFLOW_S3_ENDPOINT_URL": f"http://{s3.endpoint}"}))
        # Ray's sockets live under its temp dir and a socket path has at most 107 bytes: pytest's folders are too deep
        ray_dirs = Path(tempfile.mkdtemp(prefix="hc-"))
        stack.callback(shutil.rmtree, ray_dirs, ignore_errors=True)
        stack.callback(lambda: _assert_stopped(stop_tree(str(ray_dirs))))
        port = _free()
        head = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                               f"--temp-dir={ray_dirs / 'head'}", "--include-dashboard=false", "--num-cpus=0",
                               "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stderr[-2000:]
        address = re.search(r"--address='([^']+)'", head.stdout + head.stderr).group(1)
        workers = []
        for i in (1, 2):
            home = base / f"w{i}"
            (home / "tmp").mkdir(parents=True)
            node_env = {**env, "TMPDIR": str(home / "tmp"), "HARNESS_CACHE": str(home / "cache")}
            cmd = [str(BIN / "ray"), "start", f"--address={address}", f"--temp-dir={ray_dirs / f'w{i}'}",
                   "--num-cpus=1", "--disable-usage-stats"]
            worker = subprocess.run(_mount_namespace(driver, cmd, home), env=node_env, capture_output=True,
                                    text=True, timeout=180)
            assert worker.returncode == 0, worker.stderr[-2000:]
            workers.append(home)
        yield Cluster(address, env, s3, tracking, driver, base, secret, workers, ray_dirs)


def _free() -> int:
    from services import free_port

    return free_port()


def _assert_stopped(left: list) -> None:
    assert not left, f"Ray processes of the test cluster survived: {left}"


def _records(store: str) -> dict[str, bytes]:
    """Every node record in the store: its path -> its bytes."""
    return {name: storage.read_bytes(storage.join(store, name)) for name in storage.files(store)
            if re.fullmatch(r"store/[^/]+/[0-9a-f]{16}/result\.json", name)}


def _tables(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.csv"))}


def test_the_smoke_dag_runs_on_nodes_that_share_no_disk_and_reports_from_the_tracking_server(cluster):
    c = cluster
    for home in c.workers:  # the premise: no worker node sees the driver's folder
        import psutil

        raylet = next(p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "raylet"
                      and any(str(c.ray_dirs / home.name) in a for a in p.info["cmdline"] or []))
        seen = subprocess.run(["nsenter", "-t", str(raylet.pid), "-m", "ls", "-A", str(c.driver)],
                              capture_output=True, text=True)
        assert seen.returncode == 0 and seen.stdout.strip() == "", f"{home.name} sees the driver's folder"
    write_fmnist(c.driver / "src", n_train=160, n_test=60)
    prep = c.harness("data", "prepare", "fashion-mnist", "--src", str(c.driver / "src"),
                     "--out", c.s3.uri("harness/data/fm"), timeout=300)
    assert prep.returncode == 0, prep.stderr[-2000:]

    store = c.s3.uri("harness/runs/reference")
    run = c.harness(*c.run_args("smoke", store))
    assert run.returncode == 0, run.stderr[-3000:]
    records = _records(store)
    assert len(records) == SMOKE_NODES
    where = {json.loads(r)["where"]["ray_node_id"] for r in records.values()}
    assert len(where) == 2, "trials should run on both worker nodes"
    for text in [*map(bytes.decode, records.values()), run.stderr, run.stdout]:
        assert str(c.driver) not in text and str(c.base) not in text, "a path of the driver's machine leaked"
        assert c.secret not in text, "a credential leaked"
    assert storage.files(storage.join(store, "tune")), "Tune's storage is in the store too"

    import mlflow

    mlflow.set_tracking_uri(c.tracking)
    runs = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
    assert sum(r.data.tags.get("harness.kind") == "node" for r in runs) == SMOKE_NODES
    assert not [v for r in runs for v in r.data.params.values() if c.secret in v]
    assert storage.files(c.s3.uri("mlflow/artifacts")), "MLflow's artifacts are proxied to the object store"

    report = c.harness("report", "smoke", "--tracking-uri", c.tracking, "--results", str(c.driver / "results" / "ref"),
                       timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    c.reference.update(_tables(c.driver / "results" / "ref"))
    assert "robustness.csv" in c.reference and "clean:" in report.stdout
    ui = c.harness("ui", "smoke", "--tracking-uri", c.tracking, timeout=120)  # a server is its own UI
    assert ui.returncode == 0 and f"experiment: {c.tracking}/#/experiments/" in ui.stdout, ui.stderr[-2000:]
    assert "classification fine-tuning compared" in ui.stdout


def test_a_plugin_from_outside_the_repository_runs_on_both_nodes(cluster):
    """docs/extending.md's rule, from a package in the driver's folder, which no worker node can see: the DAG names
    it in `plugins`, the driver imports it, and Ray ships it to every worker with the job."""
    from test_extending import with_path, write_package

    c = cluster
    ext = write_package(c.driver / "ext")
    store = c.s3.uri("harness/runs/plugin")
    sets = ["plugins=[my_ext.scf]", "rules=[bp,scf]", *SMALL]
    run = c.harness(*c.run_args("plugin", store), *[a for s in sets for a in ("--set", s)], env=with_path(ext, c.env))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[ray] shipping plugins to the workers" in run.stderr
    records = [json.loads(r) for r in _records(store).values()]
    assert len(records) == SMALL_NODES
    assert len({r["where"]["ray_node_id"] for r in records}) == 2, "trials should run on both nodes"
    scf = [r for r in records if r["node"]["axes"].get("rule") == "scf" and r["node"]["stage"] == "finetune"]
    assert len(scf) == 1 and scf[0]["result"]["metrics"]["n"] > 0


def _wait_for(what: str, found, proc: subprocess.Popen, timeout: float = 600):
    """Poll `found()` until it returns something, while the run `proc` is still going."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = found()
        if hit:
            return hit
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {what} in {timeout:.0f} s")


def _running(store: str, stage: str) -> list[tuple[str, dict]]:
    """(key, its running.json) of every node of `stage` that is running now."""
    names = [n for n in storage.files(storage.join(store, "store", stage)) if n.endswith("/running.json")]
    out = []
    for n in names:
        try:
            out.append((n.split("/")[0], json.loads(storage.read_bytes(storage.join(store, "store", stage, n)))))
        except FileNotFoundError:  # it finished meanwhile
            pass
    return out


def _frozen_trial(store: str, stage: str) -> tuple[str, dict] | None:
    """A trial of `stage` caught running and frozen (SIGSTOP) before it could finish, or None to look again."""
    for key, where in _running(store, stage):
        try:
            os.kill(where["pid"], signal.SIGSTOP)
        except ProcessLookupError:
            continue
        if not storage.is_file(storage.join(store, "store", stage, key, "result.json")):
            return key, where
        os.kill(where["pid"], signal.SIGCONT)  # it had finished already: let it go
    return None


def test_a_worker_node_killed_mid_finetune_is_retried_elsewhere_and_changes_nothing(cluster):
    c = cluster
    assert c.reference, "needs the undisturbed run of the test above"
    store = c.s3.uri("harness/runs/killed")
    proc = subprocess.Popen([sys.executable, "-m", "harness", *c.run_args("smoke-killed", store)], cwd=c.driver,
                            env=c.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the trial is frozen first, so it cannot finish between what the test records and the node's death
        key, victim = _wait_for("fine-tuning trial", lambda: _frozen_trial(store, "finetune"), proc)
        raylet = _raylet_of(victim["pid"])
        assert raylet is not None, "a trial runs under its node's raylet"
        before = _records(store)  # what finished before the node died
        raylet.kill()
        os.kill(victim["pid"], signal.SIGKILL)  # frozen, it would not notice its raylet is gone
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "RETRYING" in err
    after = _records(store)
    assert len(after) == SMOKE_NODES
    assert {k: after[k] for k in before} == before, "a node that had finished was run again"
    assert json.loads(after[f"store/finetune/{key}/result.json"])["where"]["ray_node_id"] != victim["ray_node_id"]
    survivors = {json.loads(after[k])["where"]["ray_node_id"] for k in after if k not in before}
    assert victim["ray_node_id"] not in survivors and len(survivors) == 1, "the rest ran on the surviving node"

    report = c.harness("report", "smoke-killed", "--tracking-uri", c.tracking,
                       "--results", str(c.driver / "results" / "killed"), timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert _tables(c.driver / "results" / "killed") == c.reference


def test_an_object_store_that_stops_answering_mid_run_is_named_and_the_next_run_resumes(cluster):
    c = cluster
    store = c.s3.uri("harness/runs/stopped", connect_timeout="3", request_timeout="3", retries="1")
    args = [*c.run_args("smoke-stopped", store), *[a for s in SMALL for a in ("--set", s)]]
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=c.driver, env=c.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = False
    try:
        _wait_for("fine-tuning trial", lambda: _running(store, "finetune"), proc)
        before = _records(store)
        os.kill(c.s3.proc.pid, signal.SIGSTOP)  # moto keeps its objects in memory: paused, never killed
        stopped = True
        failed = ""
        for line in proc.stderr:  # the trials on the dead store fail (with Tune's retry) before it comes back
            failed += line
            if "FAILED" in line:
                break
        os.kill(c.s3.proc.pid, signal.SIGCONT)
        stopped = False
        out, err = proc.communicate(timeout=900)
        err = failed + err
    finally:
        if stopped:
            os.kill(c.s3.proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "object store s3://harness/runs/stopped/store/finetune/" in err, err[-3000:]
    assert "run the same command again to resume" in err and "Traceback" not in err.split("harness run:")[-1]

    again = c.harness(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cached: pretrain 1," in again.stderr, again.stderr[-2000:]  # what had finished is not run again
    after = _records(store)
    assert len(after) == SMALL_NODES and {k: after[k] for k in before} == before
    report = c.harness("report", "smoke-stopped", "--tracking-uri", c.tracking,
                       "--results", str(c.driver / "results" / "stopped"), timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "robustness.csv" in _tables(c.driver / "results" / "stopped")
