"""Bad places to write to and servers that are not there: clear errors, fast, before compute, nothing half-written."""

from __future__ import annotations

import json
import resource
import socket
from pathlib import Path

import pytest
import torch
from datagen import write_fmnist
from smokerun import harness

from harness.execution.runner import run_node
from harness.execution.store import ArtifactStore
from harness.execution.tracking import Tracker
from harness.stages import MODEL, Node
from workloads.checkpoint import save_checkpoint
from workloads.config import stage_config
from workloads.datasets import prepare
from workloads.errors import CheckpointWriteError, ServiceError, StorageError

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_mlflow_server_is_a_clear_error_before_mlflows_retrying_client_is_used(monkeypatch):
    import mlflow.utils.rest_utils

    calls = []  # MLflow's own client retries a refused connection for about four minutes: it must never start
    monkeypatch.setattr(mlflow.utils.rest_utils, "http_request", lambda *a, **k: calls.append(a) or 1 / 0)
    with pytest.raises(ServiceError, match=r"MLflow server http://127.0.0.1:\d+ is not reachable .*refused"):
        Tracker(f"http://127.0.0.1:{_closed_port()}", "x")
    from harness.analysis.runs import load_runs

    with pytest.raises(ServiceError, match=r"MLflow server http://127.0.0.1:\d+ is not reachable"):  # the report
        load_runs(f"http://127.0.0.1:{_closed_port()}", "x")
    assert calls == []


def test_an_unreachable_ray_address_is_a_clear_error_before_ray_init(monkeypatch):
    import ray

    from harness.execution.raytune import init_ray

    calls = []  # ray.init waits on an address where nothing listens for as long as one lets it: it must not start
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append(a) or 1 / 0)
    with pytest.raises(ServiceError, match=r"cannot reach the Ray cluster at 127.0.0.1:\d+: nothing answers there"):
        init_ray(f"127.0.0.1:{_closed_port()}", print)
    assert calls == []


class _FileSizeLimit:
    """RLIMIT_FSIZE for this process: writes past `limit` bytes fail with EFBIG, as on a full disk
    (Python ignores SIGXFSZ, so the write returns an error instead of killing the process)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self):
        self.old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.old[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.old)


def test_a_checkpoint_the_disk_refuses_leaves_nothing_behind(tmp_path):
    with _FileSizeLimit(1 << 20), pytest.raises(CheckpointWriteError, match=r"ckpt.pt could not be written .*"
                                                                          r"MiB free.*nothing was saved"):
        save_checkpoint({"model": {"w": torch.zeros(1 << 20)}, "config": {}}, tmp_path / "ckpt.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_stage_that_cannot_write_its_artifact_is_not_taken_as_finished(tmp_path):
    write_fmnist(tmp_path / "src", n_train=40, n_test=10)
    prepare("fashion-mnist", tmp_path / "fm", src=tmp_path / "src")
    config = {"backbone": "resnet18", "seed": 0, "device": "cpu", "weights": None,
              "data": {"root": str(tmp_path / "fm"), "source_classes": [0, 1, 2, 3, 4], "pad": 2, "train_limit": 8,
                       "test_limit": 8},
              "pretrain": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0}}
    node = Node("pretrain", "k1", "pretrain", {}, stage_config(config))
    store = ArtifactStore(tmp_path / "store")
    with _FileSizeLimit(4 << 20), pytest.raises(CheckpointWriteError):  # ResNet-18 needs ~45 MB
        run_node(node, store)
    assert not store.done("pretrain", "k1")
    left = [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert left == [], left
    record = run_node(node, store)  # room again: the same node now finishes
    assert store.done("pretrain", "k1") and store.result("pretrain", "k1") == json.loads(json.dumps(record))
    assert (store.node_dir("pretrain", "k1") / MODEL).stat().st_size > 40 << 20  # the whole ResNet-18, this time


def test_an_artifact_store_that_cannot_be_a_folder_fails_before_compute(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match=r"artifact store .*file/out/store is not writable .*--out"):
        ArtifactStore(tmp_path / "file" / "out" / "store").check_writable()


@pytest.mark.slow
def test_run_refuses_bad_places_and_absent_servers_before_compute(tmp_path):
    write_fmnist(tmp_path / "src", n_train=40, n_test=10)
    prepare("fashion-mnist", tmp_path / "fm", src=tmp_path / "src")
    smoke = [str(ROOT / "dags" / "smoke.yaml"), "--set", f"datasets.fashion-mnist.root={tmp_path / 'fm'}"]
    (tmp_path / "file").write_text("")
    cases = {  # name: (flags, the error's exit code: 5 storage, 4 a service; `harness --help` lists them)
        "store": (["--out", str(tmp_path / "file" / "out")], 5, "is not writable"),
        "ray": (["--out", str(tmp_path / "o1"), "--address", f"127.0.0.1:{_closed_port()}"], 4,
                "nothing answers there"),
        "mlflow": (["--out", str(tmp_path / "o2"), "--tracking-uri", f"http://127.0.0.1:{_closed_port()}"], 4,
                   "is not reachable"),
    }
    for name, (extra, code, message) in cases.items():
        out = harness("run", *smoke, *extra, cwd=tmp_path)
        # the message is the probe's (the tests above show the probe decides before Ray's or MLflow's waiting
        # clients are used): the command failed fast, and before any compute
        assert out.returncode == code and message in out.stderr, (name, out.stderr[-2000:])
        assert "Traceback" not in out.stderr and "[pretrain]" not in out.stderr, name  # nothing computed
    assert not list((tmp_path / "o2").glob("store/*/*/result.json"))
    search = harness("search", *smoke, "--out", str(tmp_path / "file" / "t"), cwd=tmp_path)
    assert search.returncode == 5 and "is not writable" in search.stderr, search.stderr[-2000:]


def test_the_local_ray_token_is_created_readable_by_its_owner_only(tmp_path, monkeypatch):
    from harness.execution.raytune import _private_token

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    _private_token(print)
    token = tmp_path / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    int(token.read_text(), 16)  # hex, like Ray's own
    first = token.read_text()
    _private_token(print)
    assert token.read_text() == first  # an existing token is kept: a running instance still accepts it


def test_a_failed_node_keeps_the_traceback_of_a_bug_and_one_line_for_bad_input(tmp_path, monkeypatch):
    import ray.tune

    from harness.execution.orchestrator import _failed
    from workloads.errors import DataError

    reported = []
    monkeypatch.setattr(ray.tune, "report", reported.append)
    store = ArtifactStore(tmp_path / "store")

    def failed_with(exc: Exception, key: str) -> str:
        try:
            raise exc
        except Exception as raised:  # noqa: BLE001
            _failed(store, "attack", key, raised)
        return store.failure("attack", key)

    bug = failed_with(ZeroDivisionError("division by zero"), "k1")
    assert bug.startswith("builtins.ZeroDivisionError: division by zero\nTraceback") and "failed_with" in bug
    bad = failed_with(DataError("shard x.tar is truncated"), "k2")
    assert bad == "workloads.errors.DataError: shard x.tar is truncated"
    assert [r["failed"] for r in reported] == [1, 1]
