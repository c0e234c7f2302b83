"""DAG specs and plans: validation names the file, key and allowed values; keys make caching exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from datagen import write_fmnist

from harness.dag import DagError, load_dag
from harness.plan import build_plan
from workloads.datasets import prepare

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("dag")
    write_fmnist(root / "src", n_train=20, n_test=10)
    prepare("fashion-mnist", root / "fm", src=root / "src")
    return str(root / "fm")


def _write(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / "dag.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _smoke(shards: str, *overrides: str):
    return load_dag(ROOT / "dags" / "smoke.yaml", [f"datasets.fashion-mnist.root={shards}", *overrides])


@pytest.mark.parametrize("dag", ["default.yaml", "smoke.yaml", "paper-classification.yaml", "paper-retrieval.yaml"])
def test_shipped_dags_validate(dag):
    spec = load_dag(ROOT / "dags" / dag).spec
    assert spec["experiment"] == dag.removesuffix(".yaml") and spec["attacks"]


def test_paper_grids_plan_without_data_and_estimate_cost(tmp_path):
    from harness.cost import dataset_sizes, estimate

    dag = load_dag(ROOT / "dags" / "paper-classification.yaml",
                   [f"datasets.{d}.root={tmp_path / d}" for d in ("cifar10", "imagenet")])
    nodes = build_plan(dag, require_data=False)
    count = {s: sum(n.stage == s for n in nodes) for s in ("pretrain", "finetune", "evaluate", "attack")}
    # ImageNet weights: no pretraining; 3 backbones x 2 datasets x 4 rules fine-tunings; (3 + 3 + 1 + 1) attacks each
    assert count == {"pretrain": 0, "finetune": 24, "evaluate": 24, "attack": 24 * 8}
    epochs = {n.axes["dataset"]: n.config["finetune"]["epochs"] for n in nodes if n.stage == "finetune"}
    assert epochs == {"cifar10": 20, "imagenet": 10}  # the per-dataset override of the paper's protocol
    sizes, sides = dataset_sizes(dag.spec, dag.path)
    cost = estimate(nodes, sizes, sides, 1e14)
    # ImageNet fine-tuning dominates; AlexNet/VGG/ResNet at 224 px cost what their FLOPs say
    assert cost["finetune"]["pflop"] > cost["attack"]["pflop"] > cost["evaluate"]["pflop"] > 0
    assert cost["finetune"]["hours"] == pytest.approx(cost["finetune"]["pflop"] * 1e15 / 1e14 / 3600)
    with pytest.raises(DagError, match="holds no prepared data"):
        build_plan(dag)


@pytest.mark.parametrize("change,message", [
    ({"rules": ["bp", "frsff"]}, "rules: unknown name 'frsff'; allowed: bp, brsf, fa, frsf, usf"),
    ({"backbones": ["resnet50"]}, "backbones: unknown name 'resnet50'; allowed: alexnet, resnet18, vgg16"),
    ({"finetune": {"epochs": "two"}}, "finetune.epochs: expected an integer, got 'two'"),
    ({"finetune": {"epochs": 10**12}}, "finetune.epochs: 1000000000000 is out of range"),
    ({"finetune": {"epoch": 2}}, "finetune.epoch: unknown key; allowed: epochs, batch_size"),
    ({"tasks": {"segmentation": {}}}, "tasks.segmentation: unknown task; allowed: classification, hashing"),
    ({"attacks": [{"name": "pgdd", "eps": [0.1]}]}, "attacks[0].name: unknown attack 'pgdd'; known attacks: apgd"),
    ({"attacks": [{"name": "pgd", "eps": [0.1, 3]}]}, "attacks[0].eps: eps 3.0 is outside [0, 1]"),
    ({"attacks": [{"name": "pgd"}]}, "attacks[0].eps: required: a list of L-inf budgets"),
    ({"attacks": [{"name": "boundary", "eps": [0.1], "sources": ["exact"]}]},
     "attacks[0].sources: 'boundary' queries outputs only"),
    ({"attacks": [{"name": "hag", "eps": [0.1]}]},
     "attacks[0].name: attack 'hag' applies to hashing models, and this DAG trains only classification"),
    ({"attacks": [{"name": "pgd", "eps": [0.1], "params": {"step": 3}}]},
     "unknown parameter(s) step for attack 'pgd'; allowed: alpha_factor, random_start, steps"),
    ({"rules": ["frsf"], "attacks": [{"name": "pgd", "eps": [0.1], "sources": ["transfer"]}]},
     "'transfer' crafts on the BP-fine-tuned sibling: add bp to rules"),
    ({"experiment": "a/b"}, "experiment: required: a name of letters"),
    ({"colour": "red"}, "colour: unknown key; allowed: experiment"),
    ({"datasets": {"fm": {"root": "x", "source_classes": [0, 1], "target_classes": [1, 2]}}},
     "datasets.fm: source_classes and target_classes overlap"),
    ({"resources": {"attack": {"gpu": -1}}}, "resources.attack.gpu: -1 is out of range"),
])
def test_validation_errors_name_file_key_and_allowed_values(tmp_path, change, message):
    spec = {"experiment": "t", "datasets": {"fm": {"root": "data/fm"}}, "tasks": {"classification": {}}, **change}
    path = _write(tmp_path, spec)
    with pytest.raises(DagError) as info:
        load_dag(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(DagError, match="does not exist"):
        load_dag(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(DagError, match="is not valid YAML"):
        load_dag(bad)
    bad.write_text("- a list\n")
    with pytest.raises(DagError, match="the top level must be a mapping"):
        load_dag(bad)
    with pytest.raises(DagError, match="--set 'finetune': expected KEY=VALUE"):
        load_dag(ROOT / "dags" / "smoke.yaml", ["finetune"])
    with pytest.raises(DagError, match="attacks is a list of 4; index it with 0..3"):
        load_dag(ROOT / "dags" / "smoke.yaml", ["attacks.9.eps=[0]"])


def test_missing_data_is_an_error_before_compute(tmp_path):
    dag = load_dag(ROOT / "dags" / "smoke.yaml", [f"datasets.fashion-mnist.root={tmp_path / 'nothing'}"])
    with pytest.raises(DagError, match="holds no prepared data .* run `harness data prepare fashion-mnist"):
        build_plan(dag)


def test_plan_trains_each_model_once_and_keys_follow_inputs(shards):
    nodes = build_plan(_smoke(shards))
    by_stage = {s: [n for n in nodes if n.stage == s] for s in ("pretrain", "finetune", "evaluate", "attack")}
    assert [len(v) for v in by_stage.values()] == [1, 4, 4, 13]
    assert len({n.key for n in nodes}) == len(nodes)
    pre = by_stage["pretrain"][0].key
    assert all(n.inputs == {"pretrained": pre} for n in by_stage["finetune"])
    transfer = [n for n in by_stage["attack"] if n.axes["source"] == "transfer"]
    bp_cls = next(n for n in by_stage["finetune"] if n.axes["rule"] == "bp" and n.axes["task"] == "classification")
    assert transfer and all(n.inputs["sibling"] == bp_cls.key for n in transfer)

    # one attack's eps grid changes only that attack's keys
    changed = build_plan(_smoke(shards, "attacks.1.eps=[0,0.05]"))
    diff = {n.label for n in changed} - {n.label for n in nodes}
    assert not diff
    moved = [n for n, m in zip(nodes, changed, strict=True) if n.key != m.key]
    assert moved and all(n.stage == "attack" and n.axes["attack"] == "pgd" for n in moved)

    # a fine-tuning setting moves fine-tuning and everything downstream, never pretraining
    retuned = {n.label: n.key for n in build_plan(_smoke(shards, "finetune.epochs=2"))}
    assert retuned[by_stage["pretrain"][0].label] == pre
    assert all(retuned[n.label] != n.key for n in nodes if n.stage != "pretrain")
    # the device is not part of any key; the data folder's location is not either, its manifest is
    assert {n.key for n in build_plan(_smoke(shards, "device=cuda"))} == {n.key for n in nodes}


def test_two_datasets_with_the_same_content_keep_their_own_nodes(shards, tmp_path):
    spec = {"experiment": "t", "tasks": {"classification": {}}, "rules": ["bp"],
            "datasets": {"a": {"root": shards}, "b": {"root": shards}}}
    nodes = build_plan(load_dag(_write(tmp_path, spec)))
    assert len({n.key for n in nodes}) == len(nodes) == 6
