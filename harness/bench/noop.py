"""`harness bench noop DAG`: the wall time of `harness run DAG`, then of the same command again with nothing to do
(a no-op run: every node in the store), each as the user runs it (a new process, imports included), and their
ratio. Imports no Ray itself.

The first run does whatever the run folder still needs (everything, in an empty --out); the no-op runs find every
node in the store. Targets: a no-op run of the smoke DAG <= 10% of its first run, of the default DAG < 5 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Annotated

from pydantic import Field

from harness.bench import Bench
from workloads.settings import Section


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


class Settings(Section):
    dag: str
    """A DAG file, e.g. dags/smoke.yaml."""
    sets: list[str] = []
    """DAG overrides, as for `harness run`."""
    run_out: str | None = None
    """The run folder (`harness run --out`; default: runs/EXPERIMENT)."""
    rounds: Annotated[int, Field(ge=1)] = 3
    """No-op runs."""
    out: str = "results/bench/noop.json"
    """JSON output."""


def run(s: Settings, log: Callable[[str], None] = print) -> dict:
    dag, sets, run_out, rounds = s.dag, s.sets, s.run_out, s.rounds
    cmd = [sys.executable, "-m", "harness", "run", dag, *[a for s in sets for a in ("--set", s)]]
    if run_out:
        cmd += ["--out", run_out]
    log(f"[bench noop] first run: {' '.join(cmd[2:])}")
    first = _timed(cmd)
    again = []
    for i in range(rounds):
        again.append(_timed(cmd))
        log(f"[bench noop] no-op run {i + 1}/{rounds}: {again[-1]:.2f} s")
    median = statistics.median(again)
    return {"dag": dag, "sets": sets, "out": run_out, "first_s": first, "noop_s": again, "noop_median_s": median,
            "ratio": median / first}


def format_table(r: dict) -> str:
    return (f"{r['dag']}: first run {r['first_s']:.1f} s, no-op run (median of {len(r['noop_s'])}) "
            f"{r['noop_median_s']:.2f} s, ratio {r['ratio']:.3f}")


BENCH = Bench(
    "noop", "`harness run DAG` once, then again with nothing to do: wall times and their ratio",
    "Runs `harness run DAG` as a user would (a new process each time), first whatever the run folder needs, then "
    "`--rounds` more times with every node in the store, and prints the ratio of the median no-op run to the first "
    "run.", Settings, run, format_table, positional=("dag",),
    flags={"sets": {"flags": ("--set",), "action": "append", "metavar": "KEY=VALUE"}})
