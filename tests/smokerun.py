"""The smoke DAG run once per test session (real Ray, real MLflow), shared by the end-to-end and fault tests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from datagen import write_fmnist

from workloads.datasets import prepare

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "dags" / "smoke.yaml"


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def repo_state() -> tuple:
    """What a stray write into the repository would change: new untracked files, and the default output folders
    (ignored by git, so listed here). Edits of tracked files are left out: a developer may be working meanwhile."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                            text=True).stdout
    status = "\n".join(line for line in status.splitlines() if line.startswith("??"))
    outputs = sorted((str(p), p.stat().st_mtime_ns) for d in ("runs", "results", "mlruns") for p in
                     (ROOT / d).rglob("*") if p.is_file())
    return status, outputs, (ROOT / "mlflow.db").exists()


def run_smoke(work: Path) -> tuple[Path, list[str], subprocess.CompletedProcess, float]:
    """dags/smoke.yaml on synthetic Fashion-MNIST-format shards in `work`: (work, args, process, seconds)."""
    write_fmnist(work / "src", n_train=160, n_test=60)
    prepare("fashion-mnist", work / "fm", src=work / "src")
    args = ["run", str(SMOKE), "--set", f"datasets.fashion-mnist.root={work / 'fm'}",
            "--out", str(work / "out"), "--results", str(work / "results")]
    before = repo_state()
    t0 = time.perf_counter()
    first = harness(*args, cwd=work)
    seconds = time.perf_counter() - t0
    # nothing is written outside the folders the command was given: not the working directory, not the repository
    assert sorted(p.name for p in work.iterdir()) == ["fm", "out", "results", "src"]
    assert repo_state() == before
    return work, args, first, seconds
