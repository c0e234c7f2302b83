"""Faults injected into real `harness run`s of the smoke DAG (real Ray, real MLflow): the driver SIGKILLed in each
stage level, a Ray worker SIGKILLed under a trial, a trial whose loss diverges, 4x the grid at full concurrency.
Each test counts what it injected and checks that nothing was lost and nothing finished was redone."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "dags" / "smoke.yaml"
REPORT = ("clean.csv", "robustness.csv", "hashing_attacks.csv", "blackbox_l2.csv", "diagnostics.csv",
          "verdicts.csv")


@pytest.fixture(scope="module")
def data(smoke) -> Path:
    return smoke[0] / "fm"


def _args(data: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "run", str(SMOKE), "--set", f"datasets.fashion-mnist.root={data}",
            "--out", str(work / "out"), "--results", str(work / "results"), *extra]


def _finish(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)


def _kill_group(pid: int) -> None:
    """Everything the run started, and wait until it is gone. Ray's processes share the driver's session but not
    always its process group; a worker left alive could finish its node after the test looked at the store."""
    def session() -> list[psutil.Process]:
        found = []
        for q in psutil.process_iter():
            try:
                if os.getsid(q.pid) == pid:
                    found.append(q)
            except (ProcessLookupError, PermissionError):
                continue
        return found

    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for q in session():
        with contextlib.suppress(psutil.Error):
            q.kill()
    psutil.wait_procs(session(), timeout=30)


def _run_until(cmd: list[str], cwd: Path, trigger: str, act, go_on: bool = False) -> tuple[str, int | None]:
    """Start `cmd`, read its progress until a line contains `trigger` and call act(process); then either stop
    everything it started or (go_on) let it finish. Returns its stderr and exit code."""
    proc = subprocess.Popen(cmd, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if trigger in line:
                act(proc)
                break
        else:
            pytest.fail(f"the run ended before {trigger!r}:\n{''.join(lines[-30:])}")
        if go_on:
            lines += list(proc.stderr)
        code = proc.wait(timeout=600)
    finally:
        _kill_group(proc.pid)
        proc.wait()
    return "".join(lines), code


def _finished(out: Path) -> dict[Path, int]:
    """result.json of every finished node -> its modification time."""
    return {p: p.stat().st_mtime_ns for p in (out / "store").glob("*/*/result.json")}


def _cached_counts(log: str) -> dict[str, int]:
    return {m["stage"]: int(m["cached"]) for m in re.finditer(r"\[(?P<stage>\w+)\] \d+ nodes: (?P<cached>\d+) cached",
                                                              log)}


def test_driver_killed_in_every_stage_resumes_without_redoing_work_and_reports_the_same(smoke, data, tmp_path):
    reference, _, first, _ = smoke  # the same DAG and data, never interrupted
    assert first.returncode == 0

    work = tmp_path / "killed"
    cmd = _args(data, work)
    triggers = {"pretrain": "[pretrain] 1 nodes: 0 cached, 1 to run", "finetune": "[finetune 1/4 done]",
                "evaluate": "[evaluate 1/4 done]", "attack": "[attack 3/14 done]"}
    kills, before = 0, {}
    for stage, trigger in triggers.items():
        log, _ = _run_until(cmd, tmp_path, trigger, lambda p: os.kill(p.pid, signal.SIGKILL))
        kills += 1
        if before:  # this run started from what the killed one left: every finished node was taken from the store
            for s, n in _cached_counts(log).items():
                assert n == sum(p.parts[-3] == s for p in before), (stage, s, log[-2000:])
        assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # and none was written again
        before = _finished(work / "out")
        assert not any(p.with_name("failed.json").exists() for p in before)
    assert kills == 4 and len(before) < 25  # the last kill left work to do

    last = _finish(cmd, tmp_path)
    assert last.returncode == 0, last.stderr[-3000:]
    ran = {s: int(n) for s, n in re.findall(r"(\w+) (\d+)", last.stderr.split("ran: ")[1].split(";")[0])}
    assert sum(ran.values()) == 25 - len(before)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    for name in REPORT:  # the same numbers as a run never interrupted
        assert (work / "results" / name).read_text() == (reference / "results" / name).read_text(), name
    mlflow.set_tracking_uri(f"sqlite:///{work / 'out' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("smoke")
    nodes = mlflow.search_runs([exp.experiment_id], "tags.`harness.kind` = 'node'", output_format="list")
    assert len({r.data.tags["harness.node_key"] for r in nodes}) == 25  # every node is in MLflow, once killed or not


def test_a_killed_worker_is_retried_and_a_diverging_trial_fails_alone(data, tmp_path):
    """One run, two faults: the worker under a fine-tuning trial is SIGKILLed (Tune retries the trial), and one
    cell's learning rate makes its loss NaN (recorded as FAILED; its evaluation and attacks are skipped)."""
    # a learning rate of 1e30 (a DAG may say so: no upper bound on rates is principled) reaches NaN in one step
    script = f"""
import sys
from harness.planning.dag import load_dag
from harness.execution.orchestrator import run_dag
dag = load_dag({str(SMOKE)!r}, ["datasets.fashion-mnist.root={data}",
                "finetune_by_cell={{'*/*/hashing/bp': {{lr_backbone: 1.0e+30, lr_head: 1.0e+30}}}}"])
summary = run_dag(dag, out_dir={str(tmp_path / 'out')!r})
print("SUMMARY", {{"failed": [v[0] for v in summary.failed.values()], "skipped": len(summary.skipped),
                  "ran": summary.ran}}, file=sys.stderr, flush=True)
sys.exit(0 if summary.ok else 1)
"""
    killed = []

    def kill_a_trial_worker(proc: subprocess.Popen) -> None:
        # every node writes running.json (its worker's pid) as it starts: the first fine-tuning's is the event
        started = tmp_path / "out" / "store" / "finetune"
        for _ in range(600):  # a readiness wait, not a speed check: up to a minute for the level's first trial
            found = sorted(started.glob("*/running.json"))
            if found:
                pid = json.loads(found[0].read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    log, code = _run_until([sys.executable, "-c", script], tmp_path, "[finetune] 4 nodes", kill_a_trial_worker,
                           go_on=True)
    assert len(killed) == 1 and "RETRYING finetune" in log, log[-3000:]
    assert code == 1, log[-3000:]  # the diverged trial
    summary = next(line for line in log.splitlines() if line.startswith("SUMMARY"))
    assert "finetune fashion-mnist/resnet18/hashing/bp/s0" in summary and "'skipped': 3" in summary, summary

    store = tmp_path / "out" / "store"
    failed = list(store.glob("*/*/failed.json"))
    assert len(failed) == 1
    error = json.loads(failed[0].read_text())["error"]
    assert re.search(r"finetune\[bp\] diverged at epoch 0, step \d+: loss is (nan|inf)", error), error
    # 25 nodes: the diverged fine-tuning, then its evaluation, its HAG attack and its primary budget skipped; the
    # other 21 finished,
    # the retried trial among them
    finished = list(store.glob("*/*/result.json"))
    assert len(finished) == 21
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("smoke")
    runs = mlflow.search_runs([exp.experiment_id], "tags.`harness.kind` = 'node'", output_format="list")
    bad = [r for r in runs if r.info.status == "FAILED"]
    assert len(bad) == 1 and "diverged" in bad[0].data.tags["harness.error"]
    assert bad[0].data.tags["axis.task"] == "hashing" and bad[0].data.tags["axis.rule"] == "bp"
    assert sum(r.info.status == "FINISHED" for r in runs) == 21


def test_four_times_the_grid_at_full_concurrency_loses_nothing(data, tmp_path):
    """4 seeds instead of 1 (100 nodes) and a quarter CPU per trial: 8 trials at a time on 2 cores, while the driver
    logs every node to one sqlite MLflow store."""
    sets = ["--set", "seeds=[0,1,2,3]"]
    for stage in ("pretrain", "finetune", "evaluate", "attack"):
        sets += ["--set", f"resources.{stage}.cpu=0.25"]
    done = _finish(_args(data, tmp_path, *sets), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ran: pretrain 4, finetune 16, evaluate 16, attack 56, primary 8" in done.stderr
    assert "database is locked" not in done.stderr.lower()
    records = [json.loads(p.read_text()) | {"end": p.stat().st_mtime}
               for p in (tmp_path / "out" / "store").glob("*/*/result.json")]
    assert len(records) == 100
    # trials really ran side by side: the most that overlapped in time. Each trial's span is its own start and end,
    # so a slow machine stretches them all alike: with 8 slots on 2 cores, 4 overlapping is a matter of scheduling,
    # not of speed
    events = sorted([(r["end"] - r["seconds"], 1) for r in records] + [(r["end"], -1) for r in records])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak >= 4, peak
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("smoke")
    runs = mlflow.search_runs([exp.experiment_id], "tags.`harness.kind` = 'node'", output_format="list")
    assert len(runs) == 100 and all(r.info.status == "FINISHED" for r in runs)
    assert sorted({r.data.tags["axis.seed"] for r in runs}) == ["0", "1", "2", "3"]  # every trial's seed is logged


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_sigterm_or_sighup_stops_the_run_and_every_ray_process_it_started(data, tmp_path, sig):
    """Ctrl-C, and SIGTERM (`kill`, a scheduler) or SIGHUP (a closed terminal) alike: the trials in progress are
    stopped by Tune, not interrupted inside Ray (where CI once saw the driver hang), then the run exits 130 with
    finished nodes kept, and the local Ray instance it started goes with it. Ray's own SIGTERM handler, which
    aborts the driver with a stack dump, is not left in place."""
    proc = subprocess.Popen(_args(data, tmp_path, "--no-report"), cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for line in proc.stderr:
            if "epoch" in line:  # a trial is training: Ray's whole local instance is up
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any(c.name() == "raylet" for c in children), "the run should have started a local Ray instance"
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 130
        said = proc.stderr.read()
        assert f"{sig.name}: stopping the trials in progress" in said  # the signal came during a Tune run
        assert "run the same command again to resume" in said and "SIGTERM received" not in said
        assert "Traceback" not in said
        _, alive = psutil.wait_procs(children, timeout=60)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], f"left running after {sig.name}"
    finally:
        _kill_group(proc.pid)
