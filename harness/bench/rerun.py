"""`harness bench rerun DAG`: the wall time of `harness run DAG`, then of the same command again (nothing to do),
each as the user runs it (a new process, imports included), and their ratio. Imports no Ray itself.

The first run does whatever the run folder still needs (everything, in an empty --out); the reruns find every
node in the store. Issue targets: a rerun of the smoke DAG <= 10% of its first run, of the default DAG < 5 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def run(dag: str, sets: list[str], run_out: str | None, rounds: int, log: Callable[[str], None]) -> dict:
    cmd = [sys.executable, "-m", "harness", "run", dag, *[a for s in sets for a in ("--set", s)]]
    if run_out:
        cmd += ["--out", run_out]
    log(f"[bench rerun] first run: {' '.join(cmd[2:])}")
    first = _timed(cmd)
    again = []
    for i in range(rounds):
        again.append(_timed(cmd))
        log(f"[bench rerun] rerun {i + 1}/{rounds}: {again[-1]:.2f} s")
    median = statistics.median(again)
    return {"dag": dag, "sets": sets, "out": run_out, "first_s": first, "rerun_s": again, "rerun_median_s": median,
            "ratio": median / first}


def format_table(r: dict) -> str:
    return (f"{r['dag']}: first run {r['first_s']:.1f} s, rerun (median of {len(r['rerun_s'])}) "
            f"{r['rerun_median_s']:.2f} s, ratio {r['ratio']:.3f}")
