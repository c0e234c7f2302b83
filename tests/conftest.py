import gc
import os
from pathlib import Path

import pytest
import torch

# Tests compare numbers across runs; keep them single-threaded-deterministic and quiet.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# statsmodels' Holm correction runs a full gc.collect() per call: with torch, polars and scipy loaded that is ~0.1 s,
# most of a verdict test's time. Moving what the imports made into the permanent generation makes it ~10x cheaper.
gc.freeze()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """One real `harness run dags/smoke.yaml` (see smokerun.py), shared by the tests that need a finished run."""
    from smokerun import run_smoke

    return run_smoke(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """A tiny prepared Fashion-MNIST-format dataset, for DAGs that plan against real manifests."""
    from datagen import write_fmnist

    from workloads.datasets import prepare

    root = tmp_path_factory.mktemp("dag")
    write_fmnist(root / "src", n_train=20, n_test=10)
    prepare("fashion-mnist", root / "fm", src=root / "src")
    return str(root / "fm")


def require(what: str, how: str) -> None:
    """Something a test needs is missing: under CI (`CI` set) that is a failure, since a green CI run must have run
    the test; elsewhere a skip that says why and how to get it."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {what} is missing, so this test cannot run: {how}", pytrace=False)
    pytest.skip(f"{what} is missing: {how}")


@pytest.fixture(scope="session")
def fmnist_source() -> Path:
    """The folder of real Fashion-MNIST's IDX files, found where `harness data prepare fashion-mnist` looks."""
    from workloads.datasets.adapters.fashion_mnist import FashionMNIST
    from workloads.errors import DataError

    try:
        return FashionMNIST().locate()
    except DataError as exc:
        require("real Fashion-MNIST", f"`make fmnist-source` installs it. {exc}")


def pytest_collection_modifyitems(config, items):
    """`make test-fast` runs `-m "not slow"`: no Ray, no MLflow, no real data. A test that starts Ray or MLflow
    (`integration`) or reads real data, but is not marked slow, would leak into it: refuse to collect it."""
    leaks = [item.nodeid for item in items if item.get_closest_marker("slow") is None and (
        item.get_closest_marker("integration") is not None or {"smoke", "fmnist_source"} & set(item.fixturenames))]
    if leaks:
        raise pytest.UsageError("mark these tests slow (they start Ray/MLflow or read real data): " + ", ".join(leaks))
