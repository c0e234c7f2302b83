"""`harness ui`: the MLflow UI on an experiment's store, on 127.0.0.1, with addresses that open what they say."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from harness.cli import main
from harness.execution.tracking import Tracker

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store(tmp_path) -> tuple[str, list[str]]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp", artifact_root=tmp_path / "artifacts")
    tracker.start_parent("old", {}, {})
    tracker.log_child("finetune old", {"harness.stage": "finetune", "axis.task": "classification"}, {}, {"top1": 0.5})
    tracker.start_parent("latest", {}, {})
    children = [tracker.log_child(f"finetune {rule} {task}", {"harness.stage": "finetune", "axis.task": task},
                                  {"rule": rule}, {"top1": 0.8}) for task in ("classification", "hashing")
                for rule in ("bp", "usf")]
    tracker.log_child("evaluate bp", {"harness.stage": "evaluate"}, {}, {"top1": 0.9})
    return uri, children


def test_ui_serves_the_experiment_on_localhost_and_compares_the_rules_of_the_latest_run(tmp_path):
    uri, children = _store(tmp_path)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "ui", "exp", "--tracking-uri", uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = {}
        for line in proc.stdout:
            what, _, url = line.strip().partition(": ")
            lines[what] = url
            if line.startswith("serving"):
                break
        assert proc.poll() is None, proc.stderr.read()
        assert lines["experiment"].startswith(f"http://127.0.0.1:{port}/#/experiments/")
        with urllib.request.urlopen(lines["experiment"].split("#")[0], timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        for task, ids in (("classification", children[:2]), ("hashing", children[2:])):
            compare = urllib.parse.parse_qs(lines[f"{task} fine-tuning compared"].split("?", 1)[1])
            assert json.loads(compare["runs"][0]) == ids  # the latest run's, one per rule, in the order they ran
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port} " in listening and f"0.0.0.0:{port} " not in listening
        _stops_with_every_child(proc, signal.SIGTERM)  # what `timeout 60 harness ui` sends
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _serving(uri: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "harness", "ui", "exp", "--tracking-uri", uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("serving"):
            return proc
    raise AssertionError(f"harness ui did not start: {proc.stderr.read()[-2000:]}")


def _stops_with_every_child(proc: subprocess.Popen, sig: signal.Signals) -> None:
    import psutil

    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the MLflow server should be running under harness ui"
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], f"left running after {sig.name}: {alive}"


def test_ui_stops_its_server_and_every_worker_on_sighup(tmp_path):
    uri, _ = _store(tmp_path)
    proc = _serving(uri, _free_port())
    try:
        _stops_with_every_child(proc, signal.SIGHUP)  # a closed terminal
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_ui_refuses_a_missing_store_an_unknown_experiment_and_a_taken_port(tmp_path, capsys):
    assert main(["ui", "exp", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    uri, _ = _store(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "exp", "--tracking-uri", uri, "--port", str(port)]) != 0
        assert f"port {port} on 127.0.0.1 is taken" in capsys.readouterr().err
    assert main(["ui", "nope", "--tracking-uri", uri, "--port", str(_free_port())]) == 2
    assert "the store has no experiment 'nope'" in capsys.readouterr().err
    assert main(["ui", "exp", "--tracking-uri", f"http://127.0.0.1:{_free_port()}"]) == 4  # a server that is not there
    assert "is not reachable" in capsys.readouterr().err
