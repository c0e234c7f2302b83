import os

import pytest
import torch

# Tests compare numbers across runs; keep them single-threaded-deterministic and quiet.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """One real `harness run dags/smoke.yaml` (see smokerun.py), shared by the tests that need a finished run."""
    from smokerun import run_smoke

    return run_smoke(tmp_path_factory.mktemp("smoke"))
