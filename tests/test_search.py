"""`harness search`: the held-out split, the choice of the best setting, the override it writes, and one real search
(Ray Tune + ASHA + MLflow) on the smoke DAG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from datagen import idx_bytes, write_fmnist

from harness.planning.dag import load_dag
from harness.planning.plan import build_plan
from harness.search import SEARCHED, Trial, choose
from workloads.datasets import ShardReader, prepare
from workloads.datasets.adapters.fashion_mnist import FashionMNIST, read_idx
from workloads.errors import ConfigError, DataError, TrialError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "dags" / "smoke.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search")
    write_fmnist(root / "src", n_train=200, n_test=40)
    prepare("fashion-mnist", root / "fm", src=root / "src")
    return root / "fm"


def _keys(reader: ShardReader) -> set[bytes]:
    return {v.numpy().tobytes() for x, _ in reader for v in x}


@pytest.mark.parametrize("cache", [True, False])
def test_holdout_and_fit_parts_are_disjoint_and_cover_the_split(shards, cache):
    kw = {"batch_size": 32, "channels": 1, "cache": cache}
    fit = _keys(ShardReader(shards, "train", holdout=0.25, part="fit", **kw))
    held = _keys(ShardReader(shards, "train", holdout=0.25, part="holdout", **kw))
    everything = _keys(ShardReader(shards, "train", **kw))
    assert not fit & held and fit | held == everything
    assert 0.15 < len(held) / len(everything) < 0.35
    # by sample key: the same holdout whatever the shuffle seed
    assert _keys(ShardReader(shards, "train", holdout=0.25, part="holdout", shuffle=True, seed=3, **kw)) == held


def test_holdout_arguments_are_checked(shards):
    with pytest.raises(DataError, match="holdout must be a fraction"):
        ShardReader(shards, "train", holdout=1.0, part="fit")
    with pytest.raises(DataError, match="part='holdout' with holdout=0"):
        ShardReader(shards, "train", part="holdout")


def _trial(rule, phase, curve, epochs, error=None, lr=1e-4):
    return Trial(rule, phase, {"lr_backbone": lr, "lr_head": lr, "weight_decay": 0.0, "epochs": epochs},
                 curve=[(i + 1, v) for i, v in enumerate(curve)], error=error)


def test_choose_keeps_the_dag_setting_unless_a_trial_beats_it():
    trials = [_trial("bp", "baseline", [0.5, 0.7], 2), _trial("bp", "search", [0.6, 0.65], 4, lr=1e-3),
              _trial("frsf", "baseline", [0.5, 0.6], 2), _trial("frsf", "search", [0.4, 0.8, 0.8], 4, lr=2e-3),
              _trial("frsf", "search", [0.0], 4, error="diverged", lr=1.0)]
    best = choose(trials, ["bp", "frsf"], {"bp": 2, "frsf": 2})
    assert best["bp"] == {"finetune": {"lr_backbone": 1e-4, "lr_head": 1e-4, "weight_decay": 0.0, "epochs": 2},
                          "val": 0.7, "from": "baseline"}
    # the peak's epoch (the earliest on a tie), from a trial ASHA stopped after 3 of 4 epochs
    assert best["frsf"]["from"] == "search" and best["frsf"]["val"] == 0.8
    assert best["frsf"]["finetune"] == {"lr_backbone": 2e-3, "lr_head": 2e-3, "weight_decay": 0.0, "epochs": 2}
    assert trials[3].stopped_early and not trials[4].stopped_early
    with pytest.raises(TrialError, match="DAG's own fine-tuning setting fails for bp"):
        choose([_trial("bp", "baseline", [0.0], 2, error="diverged")], ["bp"], {"bp": 2})


def _dag(tmp_path: Path, shards: Path, override: dict | None = None, sets: tuple = ()):
    files = []
    if override is not None:
        (tmp_path / "o.yaml").write_text(yaml.safe_dump(override))
        files.append(str(tmp_path / "o.yaml"))
    return load_dag(SMOKE, [f"datasets.fashion-mnist.root={shards}", *sets], files)


def test_finetune_by_cell_sets_only_the_matching_cells(tmp_path, shards):
    plain = {n.label: n for n in build_plan(_dag(tmp_path, shards))}
    over = {"finetune_by_cell": {"fashion-mnist/resnet18/classification/frsf": {"lr_head": 3e-4, "epochs": 3},
                                 "*/*/*/frsf": {"lr_head": 1e-3, "weight_decay": 0.0}}}
    tuned = {n.label: n for n in build_plan(_dag(tmp_path, shards, over))}
    cls = "finetune fashion-mnist/resnet18/classification/frsf/s0"
    # the specific pattern wins over '*'
    assert tuned[cls].config.finetune.model_dump() == {**plain[cls].config.finetune.model_dump(), "lr_head": 3e-4,
                                                        "epochs": 3, "weight_decay": 0.0}
    hashing = "finetune fashion-mnist/resnet18/hashing/frsf/s0"
    assert tuned[hashing].config.finetune.lr_head == 1e-3
    changed = {label for label, n in tuned.items() if n.key != plain[label].key}
    assert {cls, hashing} <= changed
    assert not any("/bp/" in label and "finetune" in label for label in changed)  # bp's cache is untouched


@pytest.mark.parametrize("override,match", [
    ({"finetune_by_cell": {"fashion-mnist/resnet18/frsf": {}}}, "DATASET/BACKBONE/TASK/RULE"),
    ({"finetune_by_cell": {"fashion-mnist/resnet18/classification/usf": {}}}, "rule 'usf' is not in this DAG"),
    ({"finetune_by_cell": {"*/*/*/frsf": {"lr": 1}}}, r"finetune_by_cell\.\*/\*/\*/frsf\.lr: unknown key"),
    ({"finetune_by_cell": {"*/*/*/frsf": {"epochs": 0}}}, "out of range"),
    ([1, 2], "the top level must be a mapping"),
])
def test_bad_overrides_are_clear_errors(tmp_path, shards, override, match):
    with pytest.raises(ConfigError, match=match):
        _dag(tmp_path, shards, override)


def test_missing_override_file(shards):
    with pytest.raises(ConfigError, match="override file nowhere.yaml does not exist"):
        load_dag(SMOKE, [f"datasets.fashion-mnist.root={shards}"], ["nowhere.yaml"])


def _fmnist_subset(source: Path, folder: Path, n_train: int, n_test: int) -> None:
    """The first images of the real Fashion-MNIST (a search on random images has nothing to find)."""
    folder.mkdir(parents=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            arr = read_idx(FashionMNIST._find(source, f"{stem}-{kind}"))[:n]
            (folder / f"{stem}-{kind}").write_bytes(idx_bytes(np.asarray(arr)))


@pytest.mark.slow
@pytest.mark.integration
def test_search_on_the_smoke_dag_matches_or_beats_the_default_and_logs_the_best(tmp_path, fmnist_source):
    _fmnist_subset(fmnist_source, tmp_path / "src", 1000, 100)
    prepare("fashion-mnist", tmp_path / "fm", src=tmp_path / "src")
    sets = ["--set", f"datasets.fashion-mnist.root={tmp_path / 'fm'}",
            "--set", "datasets.fashion-mnist.train_limit=160"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness", "search", str(SMOKE), *sets, "--out", str(out), "--samples", "4",
           "--max-epochs", "2"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "] search frsf " in done.stderr and "epoch 2/2 val" in done.stderr  # live progress

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("smoke")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("harness.kind") == "search")
    trials = [r for r in runs if r.data.tags.get("harness.kind") == "search-trial"]
    assert parent.info.status == "FINISHED" and len(trials) == 2 * (1 + 4)
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    m, p = parent.data.metrics, parent.data.params
    for rule in ("bp", "frsf"):
        assert {f"best.{rule}.{k}" for k in (*SEARCHED, "epochs")} <= set(p)
        # the parent's best is the best of what its trial children logged, and names that trial's setting
        mine = [t for t in trials if t.data.tags["axis.rule"] == rule]
        scores = {t.info.run_id: t.data.metrics["best_val"] for t in mine if t.data.tags["search.phase"] == "search"}
        top = max(scores, key=scores.get)
        assert m[f"best_val/{rule}"] == max(scores[top], m[f"baseline_val/{rule}"])
        unique = sum(v == scores[top] for v in scores.values()) == 1
        if scores[top] > m[f"baseline_val/{rule}"] and unique:
            winner = next(t for t in mine if t.info.run_id == top)
            assert p[f"best.{rule}.lr_head"] == winner.data.params["lr_head"]
            assert p[f"best.{rule}.epochs"] == str(int(winner.data.metrics["best_epoch"]))
    assert m["stopped_early"] == sum(t.data.tags["search.stopped_early"] == "true" for t in trials)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"best.yaml", "search.png", "best.json"} <= artifacts

    # the override file is a valid DAG override: the cells it names get its values, nothing else changes
    best = out / "search" / "best.yaml"
    written = yaml.safe_load(best.read_text()) or {}
    cells = written.get("finetune_by_cell", {})
    searched = [r for r in ("bp", "frsf") if m[f"best_val/{r}"] > m[f"baseline_val/{r}"]]
    assert sorted(c.rsplit("/", 1)[1] for c in cells) == sorted(searched)
    dag = load_dag(SMOKE, [s for s in sets if s != "--set"], [str(best)])
    for node in build_plan(dag):
        cell = f"fashion-mnist/resnet18/{node.axes.get('task')}/{node.axes.get('rule')}"
        if node.stage == "finetune" and cell in cells:
            tuned = node.config.finetune.model_dump()
            assert tuned == {**tuned, **cells[cell]}
            assert str(tuned["epochs"]) == p[f"best.{node.axes['rule']}.epochs"]


@pytest.mark.slow
@pytest.mark.integration
def test_asha_stops_a_bad_setting_before_its_last_epoch(tmp_path, fmnist_source):
    """Learning rates drawn across 6 orders of magnitude (--spread 1000) include settings that cannot learn in a few
    epochs; with one trial at a time (a trial asks for every CPU), ASHA compares each trial at epoch 1 and 2 with
    those before it and ends the clearly worse ones there, short of their 3 epochs. The draws are seeded, so the
    same trials run every time."""
    import os

    _fmnist_subset(fmnist_source, tmp_path / "src", 600, 100)
    prepare("fashion-mnist", tmp_path / "fm", src=tmp_path / "src")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness", "search", str(SMOKE), "--set",
           f"datasets.fashion-mnist.root={tmp_path / 'fm'}", "--set", "datasets.fashion-mnist.train_limit=160",
           "--set", f"resources.finetune.cpu={os.cpu_count()}", "--rules", "bp", "--samples", "6", "--max-epochs",
           "3", "--spread", "1000", "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("smoke")
    trials = [r for r in mlflow.search_runs([exp.experiment_id], output_format="list")
              if r.data.tags.get("search.phase") == "search"]
    client = mlflow.MlflowClient()
    curves = {t.info.run_id: [m.value for m in client.get_metric_history(t.info.run_id, "val")] for t in trials}
    shown = "\n".join(f"lr_head {t.data.params['lr_head']}, lr_backbone {t.data.params['lr_backbone']}: "
                      f"{curves[t.info.run_id]} ({t.data.tags.get('harness.error', 'ok')[:60]})" for t in trials)
    stopped = [t for t in trials if t.data.tags["search.stopped_early"] == "true"]
    assert stopped, f"ASHA stopped no trial early:\n{shown}"
    for t in stopped:  # stopped at a rung (epoch 1 or 2), below the best score any trial had there
        curve = curves[t.info.run_id]
        assert len(curve) in (1, 2) and "harness.error" not in t.data.tags, shown
        assert curve[-1] < max(c[len(curve) - 1] for c in curves.values() if len(c) >= len(curve)), shown
