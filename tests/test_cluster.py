"""Beyond one process: the smoke DAG on a real two-node Ray cluster (two `ray start` on this machine, each with its
own CPUs and temp dir), logging to a real `mlflow server` on 127.0.0.1, and the report read back from that server.
Every process the test starts is stopped by pid (never `ray stop`, which would stop other people's Ray)."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from datagen import write_fmnist

from workloads.datasets import prepare

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_tree(marker: str, extra: list | None = None) -> list:
    """Stop every process whose command line names `marker`, their children, and `extra`; return survivors."""
    import psutil

    def named(p) -> bool:
        try:
            return any(marker in a for a in p.cmdline())
        except psutil.Error:
            return False

    procs = {p for p in psutil.process_iter() if named(p)} | set(extra or [])
    for p in list(procs):
        try:
            procs.update(p.children(recursive=True))
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs), timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    return [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray2")
    # Ray 2.59+ authenticates with a token; this cluster gets its own (head, worker and driver share the file)
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = _free_port()
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        head = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                               f"--temp-dir={base / 'head'}", "--include-dashboard=false", *common],
                              env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stderr[-2000:]
        address = re.search(r"--address='([^']+)'", head.stdout + head.stderr).group(1)
        worker = subprocess.run([str(BIN / "ray"), "start", f"--address={address}", f"--temp-dir={base / 'worker'}",
                                 *common], env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield address, env
    finally:
        assert not _stop_tree(str(base)), "Ray processes of the test cluster survived"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{base / 'db.sqlite'}",
                             "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
            assert proc.poll() is None, proc.stderr.read()[-2000:]
        else:
            pytest.fail("mlflow server did not come up in 120 s")
        yield uri
    finally:
        import psutil

        assert not _stop_tree(str(base), [psutil.Process(proc.pid)]), "mlflow server processes survived"


def test_smoke_dag_on_two_nodes_logging_to_an_mlflow_server(tmp_path, cluster, mlflow_server):
    address, env = cluster
    write_fmnist(tmp_path / "src", n_train=160, n_test=60)
    prepare("fashion-mnist", tmp_path / "fm", src=tmp_path / "src")
    run = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(ROOT / "dags" / "smoke.yaml"), "--address", address,
         "--tracking-uri", mlflow_server, "--set", f"datasets.fashion-mnist.root={tmp_path / 'fm'}",
         "--out", str(tmp_path / "out"), "--no-report"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"[ray] connecting to {address}" in run.stderr
    records = (tmp_path / "out" / "store").glob("*/*/result.json")
    where = [json.loads(p.read_text())["where"]["ray_node_id"] for p in records]
    assert len(where) == 25 and len(set(where)) == 2, "trials should run on both nodes"

    report = subprocess.run([sys.executable, "-m", "harness", "report", "smoke", "--tracking-uri", mlflow_server,
                             "--results", str(tmp_path / "results")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "results" / "robustness.csv").is_file() and "clean:" in report.stdout

    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
    assert sum(r.data.tags.get("harness.kind") == "node" for r in runs) == 25


def test_a_plugin_from_outside_the_repository_runs_on_both_nodes(tmp_path, cluster):
    """docs/extending.md's rule, from a package the cluster's nodes do not have on their path: the DAG names it in
    `plugins`, the driver imports it, and Ray ships it to every worker with the job."""
    from test_extending import with_path, write_package

    address, env = cluster
    ext = write_package(tmp_path / "ext")
    write_fmnist(tmp_path / "src", n_train=160, n_test=60)
    prepare("fashion-mnist", tmp_path / "fm", src=tmp_path / "src")
    sets = [f"datasets.fashion-mnist.root={tmp_path / 'fm'}", "plugins=[my_ext.scf]", "rules=[bp,scf]",
            "tasks={classification: {}}", "attacks=[{name: fgsm, sources: [rule, exact], eps: [0, 0.1], n: 8}]"]
    run = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(ROOT / "dags" / "smoke.yaml"), "--address", address,
         *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "out"), "--no-report"],
        cwd=tmp_path, env=with_path(ext, env), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[ray] shipping plugins to the workers" in run.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "store").glob("*/*/result.json")]
    assert len(records) == 1 + 2 + 2 + 4 + 1  # pretrain, finetune, evaluate, attack, the primary budget
    assert len({r["where"]["ray_node_id"] for r in records}) == 2, "trials should run on both nodes"
    scf = [r for r in records if r["node"]["axes"].get("rule") == "scf" and r["node"]["stage"] == "finetune"]
    assert len(scf) == 1 and scf[0]["result"]["metrics"]["n"] > 0
