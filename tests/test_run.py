"""`harness run` end to end on real Ray and real MLflow (sqlite): the smoke DAG, its cache, partial re-runs, the
report, and a failing dataset that does not stop the rest of the grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import polars as pl
import pytest
from datagen import write_fmnist
from smokerun import harness

from harness.analysis.report import REPORT_FILES
from workloads.datasets import prepare

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]


def _runs(work: Path, experiment: str = "smoke"):
    mlflow.set_tracking_uri(f"sqlite:///{work / 'out' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs([exp.experiment_id], output_format="list", max_results=1000)


def test_first_run_executes_every_node_and_reports(smoke):
    work, _, first, _ = smoke
    assert first.returncode == 0, first.stderr[-3000:]
    assert "ran: pretrain 1, finetune 4, evaluate 4, attack 14" in first.stderr
    assert "[finetune 0/4 done]" in first.stderr and "epoch 1/1" in first.stderr  # live progress
    runs = _runs(work)
    parents = [r for r in runs if r.data.tags.get("harness.kind") == "run"]
    children = [r for r in runs if r.data.tags.get("harness.kind") == "node"]
    assert len(parents) == 1 and len(children) == 25
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    attached = {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/README.md", "report/robustness.png", "report/clean.csv"} <= attached
    atk = next(c for c in children if c.data.tags.get("axis.attack") == "pgd")
    assert {"robust_acc/eps_0", "robust_acc/eps_0.1", "success_rate/eps_0.1"} <= set(atk.data.metrics)
    assert atk.data.tags["axis.rule"] in ("bp", "frsf") and atk.data.params["attack"] == "pgd"
    for name in ("README.md", "clean.csv", "robustness.csv", "robustness.png", "hashing_attacks.md",
                 "blackbox_l2.csv", "diagnostics.csv", "verdicts.csv"):
        assert (work / "results" / name).is_file(), name
    listed = json.loads((work / "results" / REPORT_FILES).read_text())  # what the next report may replace
    assert set(listed) == {p.name for p in (work / "results").iterdir()} - {REPORT_FILES}
    verdicts = pl.read_csv(work / "results" / "verdicts.csv")
    assert sorted(verdicts.filter(pl.col("rule") == "frsf")["task"].to_list()) == ["classification", "hashing"]
    assert set(verdicts["primary_chosen_by"]) == {"calibration on the baseline"}  # the smoke DAG fixes no budget
    primary = [c for c in children if c.data.tags["harness.stage"] == "primary"]
    assert {c.data.metrics["primary_eps"] for c in primary} == set(verdicts["primary"])  # recorded in MLflow
    retrieval = pl.read_csv(work / "results" / "hashing_worst.csv")
    assert retrieval["split clean mAP"].is_between(0, 1).all()  # the whole split's, beside the attacked queries'
    curve = pl.read_csv(work / "results" / "worst_case_curve.csv")
    assert curve.height == 4 * 2 and set(curve["eps"]) == {0.0, 0.1}  # every model at every L-inf budget
    radii = pl.read_csv(work / "results" / "radii.csv")  # per classifier, on the curve's images
    assert sorted(radii["rule"]) == ["bp", "frsf"] and radii["n"].min() > 0 and radii["bound"].max() == 0.1
    readme = (work / "results" / "README.md").read_text()  # the first table: both answers, the radius, the curve
    assert readme.index("| median radius |") < readme.index("## Answers") < readme.index("## Robustness radii")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(atk.info.run_id)}
    assert {"outcomes.parquet", "result.json"} <= artifacts  # the per-image evidence of the verdicts
    assert "clean:" in first.stdout and "robustness:" in first.stdout


def test_second_run_is_cached_and_an_eps_change_reruns_only_that_attack(smoke):
    work, args, first, _ = smoke
    assert first.returncode == 0
    tune_runs = sorted((work / "out" / "tune").iterdir())
    again = harness(*args, "--no-report", cwd=work)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "ran: pretrain 0, finetune 0, evaluate 0, attack 0" in again.stderr
    # nothing to run: Ray is not even started and no Tune run is made (how fast that is: `harness bench`, not here)
    assert "[ray]" not in again.stderr and sorted((work / "out" / "tune").iterdir()) == tune_runs
    # the same command once more: nothing changed since that complete run, so it answers from its stamp without
    # opening MLflow (no parent run, the sqlite file untouched)
    db = (work / "out" / "mlflow.db").stat()
    parents = len([r for r in _runs(work) if r.data.tags.get("harness.kind") == "run"])
    third = harness(*args, "--no-report", cwd=work)
    assert third.returncode == 0 and "nothing changed since the complete run of" in third.stderr, third.stderr
    assert "ran: pretrain 0, finetune 0, evaluate 0, attack 0" in third.stderr and "cached: pretrain 1, " \
        "finetune 4, evaluate 4, attack 14" in third.stderr
    assert (work / "out" / "mlflow.db").stat().st_mtime_ns == db.st_mtime_ns
    assert len([r for r in _runs(work) if r.data.tags.get("harness.kind") == "run"]) == parents
    changed = harness(*args, "--no-report", "--set", "attacks.1.eps=[0,0.05]", cwd=work)
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "ran: pretrain 0, finetune 0, evaluate 0, attack 4" in changed.stderr
    plan = harness("plan", *args[1:4], "--out", str(work / "out"), cwd=work)
    attack_row = next(line.split() for line in plan.stdout.splitlines() if line.startswith("attack"))
    assert plan.returncode == 0 and attack_row[1:4] == ["14", "14", "0"]  # nodes, cached, to run


def test_a_failing_dataset_is_reported_and_the_rest_finishes(tmp_path):
    write_fmnist(tmp_path / "src", n_train=120, n_test=40)
    prepare("fashion-mnist", tmp_path / "good", src=tmp_path / "src")
    prepare("fashion-mnist", tmp_path / "bad", src=tmp_path / "src")
    shard = next((tmp_path / "bad").glob("test-*.tar"))
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF  # one flipped byte inside the test split: its checksum no longer matches
    shard.write_bytes(bytes(data))
    dag = tmp_path / "two.yaml"
    common = {"source_classes": [0, 1, 2, 3, 4], "target_classes": [5, 6, 7, 8, 9], "pad": 2, "train_limit": 16,
              "test_limit": 8}
    import yaml

    dag.write_text(yaml.safe_dump({
        "experiment": "two", "device": "cpu", "rules": ["bp"], "tasks": {"classification": {}},
        "datasets": {"good": {"root": str(tmp_path / "good"), **common}, "bad": {"root": str(tmp_path / "bad"),
                                                                                 **common}},
        "pretrain": {"epochs": 1, "batch_size": 8}, "finetune": {"epochs": 1, "batch_size": 8},
        "evaluate": {"diagnostic_images": 4}, "retries": 0,
        "attacks": [{"name": "fgsm", "sources": ["rule"], "eps": [0, 0.1], "n": 4, "batch_size": 4}],
    }))
    out = harness("run", str(dag), "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res"), cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "FAILED pretrain bad/resnet18/s0" in out.stderr and "test-000000.tar" in out.stderr
    assert "4 node(s) skipped because an input failed" in out.stderr  # its finetune, evaluate, attack, budget
    runs = _runs(tmp_path, "two")
    failed = [r for r in runs if r.info.status == "FAILED" and r.data.tags.get("harness.kind") == "node"]
    assert len(failed) == 1 and "test-000000.tar does not match its manifest" in failed[0].data.tags["harness.error"]
    good = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("axis.dataset") == "good"]
    assert len(good) == 5  # pretrain, finetune, evaluate, attack, primary budget of the good dataset all finished
    assert (tmp_path / "res" / "clean.csv").is_file()  # the report still covers what finished


def test_the_local_ray_instance_listens_on_loopback_only(tmp_path):
    script = """
import json, os
import psutil
import ray
from harness.execution.raytune import init_ray
init_ray(None, lambda m: None)
tree = [psutil.Process()] + psutil.Process().children(recursive=True)
pids = {p.pid for p in tree}
listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in pids}
print(json.dumps({"node": ray.nodes()[0]["NodeManagerAddress"], "listening": sorted(listening)}))
ray.shutdown()
"""
    import json
    import os

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a" * 64)
    (home / ".ray" / "auth_token").chmod(0o644)  # as Ray itself writes it
    env = {**os.environ, "HOME": str(home)}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["node"] == "127.0.0.1"
    assert seen["listening"] and set(seen["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen
    assert (home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600  # no other local user can read it


def _metrics(out: Path) -> dict:
    """node key -> (label, metrics, attack rows, training history) of every finished node in a run folder."""
    import json

    def untimed(history: list) -> list:  # wall-clock seconds differ between runs, rightly
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    records = [json.loads(p.read_text()) for p in (out / "store").glob("*/*/result.json")]
    return {r["node"]["key"]: (r["node"]["label"], r["result"].get("metrics"), r["result"].get("rows"),
                               untimed(r["result"].get("history", []))) for r in records}


def test_same_seed_same_numbers_and_another_seed_other_numbers(smoke):
    work, args, first, _ = smoke
    assert first.returncode == 0
    base = [a for a in args if a not in ("--out", str(work / "out"))]
    again = harness(*base, "--out", str(work / "again"), "--no-report", cwd=work)
    assert again.returncode == 0, again.stderr[-2000:]
    reference, repeat = _metrics(work / "out"), _metrics(work / "again")
    assert len(repeat) == 25 and all(repeat[k] == reference[k] for k in repeat)  # bit for bit, every number
    other = harness(*base, "--out", str(work / "seed1"), "--no-report", "--set", "seeds=[1]", "--set", "attacks=[]",
                    cwd=work)
    assert other.returncode == 0, other.stderr[-2000:]
    by_label = {v[0]: v for v in repeat.values()}
    seeded = list(_metrics(work / "seed1").values())
    assert len(seeded) == 9
    for label, metrics, _, history in seeded:
        twin = by_label[label.replace("/s1", "/s0")]
        assert (metrics, history) != (twin[1], twin[3]), label  # a different seed trains differently
