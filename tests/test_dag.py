"""DAG specs and plans: validation names the file, key and allowed values; keys make caching exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.planning.dag import load_dag
from harness.planning.plan import build_plan
from workloads.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / "dag.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _smoke(shards: str, *overrides: str):
    return load_dag(ROOT / "dags" / "smoke.yaml", [f"datasets.fashion-mnist.root={shards}", *overrides])


@pytest.mark.parametrize("dag", ["default.yaml", "default-full.yaml", "smoke.yaml", "paper-classification.yaml",
                                 "paper-retrieval.yaml"])
def test_shipped_dags_validate(dag):
    config = load_dag(ROOT / "dags" / dag).config
    assert config.experiment == dag.removesuffix(".yaml") and config.attacks


def test_paper_grids_plan_without_data_and_estimate_cost(tmp_path):
    from harness.planning.cost import cost_by_stage, dataset_sizes

    dag = load_dag(ROOT / "dags" / "paper-classification.yaml",
                   [f"datasets.{d}.root={tmp_path / d}" for d in ("cifar10", "imagenet")])
    nodes = build_plan(dag, require_data=False)
    count = {s: sum(n.stage == s for n in nodes) for s in ("pretrain", "finetune", "evaluate", "attack")}
    # ImageNet weights: no pretraining; 3 backbones x 2 datasets x 4 rules fine-tunings; (3 + 3 + 1 + 1) attacks each
    assert count == {"pretrain": 0, "finetune": 24, "evaluate": 24, "attack": 24 * 8}
    epochs = {n.axes["dataset"]: n.config.finetune.epochs for n in nodes if n.stage == "finetune"}
    assert epochs == {"cifar10": 20, "imagenet": 10}  # the per-dataset override of the paper's protocol
    sizes, sides = dataset_sizes(dag.config, dag.path)
    cost = cost_by_stage(nodes, sizes, sides, 1e14)
    # ImageNet fine-tuning dominates; AlexNet/VGG/ResNet at 224 px cost what their FLOPs say
    assert cost["finetune"]["pflop"] > cost["attack"]["pflop"] > cost["evaluate"]["pflop"] > 0
    assert cost["finetune"]["hours"] == pytest.approx(cost["finetune"]["pflop"] * 1e15 / 1e14 / 3600)
    with pytest.raises(DataError, match="holds no prepared data"):
        build_plan(dag)
    from harness.planning.cost import node_pflop, wall_hours

    hours = [[h * 1e15 / 1e14 / 3600 for n, h in zip(nodes, node_pflop(nodes, sizes, sides).values(), strict=True)
              if n.stage == s] for s in ("finetune", "evaluate", "attack")]
    total = sum(map(sum, hours))
    assert wall_hours(hours, 1) == pytest.approx(total)  # one worker: everything in a row
    assert wall_hours(hours, 10**6) == pytest.approx(sum(map(max, hours)))  # a worker each: the longest per stage
    assert total / 8 <= wall_hours(hours, 8) <= total / 8 + sum(map(max, hours))


def test_wall_time_schedules_longest_first_and_stages_wait_for_each_other():
    from harness.planning.cost import wall_hours

    # longest first on the worker free soonest: 3,3 | 2,2 | 2 -> 7, within 4/3 of the best (3+3 | 2+2+2 = 6)
    assert wall_hours([[2, 3, 2, 3, 2]], 2) == 7
    assert wall_hours([[1, 1], [5]], 2) == 6  # the second stage starts once the first is done
    assert wall_hours([[], [4, 4, 4]], 3) == 4
    with pytest.raises(ValueError, match="at least 1"):
        wall_hours([[1]], 0)


@pytest.mark.parametrize("change,message", [
    ({"rules": ["bp", "frsff"]}, "rules[1]: unknown name 'frsff'; allowed: bp, brsf, fa, frsf, usf (did you mean "
                                 "'frsf'?)"),
    ({"backbones": ["resnet50"]}, "backbones[0]: unknown name 'resnet50'; allowed: alexnet, resnet18, vgg16"),
    ({"finetune": {"epochs": "two"}}, "finetune.epochs: expected an integer, got 'two'"),
    ({"finetune": {"epochs": 10**12}}, "finetune.epochs: 1000000000000 is out of range"),
    ({"finetune": {"epoch": 2}}, "finetune.epoch: unknown key; allowed: epochs, batch_size, lr_backbone, lr_head, "
                                 "weight_decay (did you mean 'epochs'?)"),
    ({"tasks": {"segmentation": {}}}, "tasks.segmentation: unknown key; allowed: classification, hashing"),
    ({"attacks": [{"name": "pgdd", "eps": [0.1]}]}, "attacks[0].name: unknown attack 'pgdd'; known attacks: apgd"),
    ({"attacks": [{"name": "pgd", "eps": [0.1, 3]}]}, "attacks[0].eps: eps 3.0 is outside [0, 1]"),
    ({"attacks": [{"name": "pgd"}]}, "attacks[0].eps: required: budgets in [0, 1] pixel space, in the attack's norm"),
    ({"attacks": [{"name": "boundary", "eps": [0.1], "sources": ["exact"]}]},
     "attacks[0].sources: 'boundary' queries outputs only"),
    ({"attacks": [{"name": "hag", "eps": [0.1]}]},
     "attacks[0].name: attack 'hag' applies to hashing models, and this DAG trains only classification"),
    ({"attacks": [{"name": "pgd", "eps": [0.1], "params": {"step": 3}}]},
     "attacks[0].params.step: unknown key; allowed: steps, restarts, alpha_factor, random_start (did you mean "
     "'steps'?)"),
    ({"rules": ["frsf"], "attacks": [{"name": "pgd", "eps": [0.1], "sources": ["transfer"]}]},
     "'transfer' crafts on the sibling fine-tuned with the baseline rule (bp): add bp to rules"),
    ({"rules": ["bp", "frsf"], "attacks": [{"name": "pgd", "eps": [0.1], "rules": ["frsf"]}]},
     "attacks[0].rules: every attack also runs on the baseline's model (bp), on the same images"),
    ({"experiment": "a/b"}, "experiment: required: a name of letters"),
    ({"colour": "red"}, "colour: unknown key; allowed: "),
    ({"datasets": {"fm": {"root": "x", "source_classes": [0, 1], "target_classes": [1, 2]}}},
     "datasets.fm: source_classes and target_classes overlap"),
    ({"resources": {"attack": {"gpu": -1}}}, "resources.attack.gpu: -1 is out of range"),
])
def test_validation_errors_name_file_key_and_allowed_values(tmp_path, change, message):
    spec = {"experiment": "t", "datasets": {"fm": {"root": "data/fm"}}, "tasks": {"classification": {}}, **change}
    path = _write(tmp_path, spec)
    with pytest.raises(ConfigError) as info:
        load_dag(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_dag(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_dag(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_dag(bad)
    with pytest.raises(ConfigError, match="--set 'finetune': expected KEY=VALUE"):
        load_dag(ROOT / "dags" / "smoke.yaml", ["finetune"])
    with pytest.raises(ConfigError, match="attacks is a list of 4; index it with 0..3"):
        load_dag(ROOT / "dags" / "smoke.yaml", ["attacks.9.eps=[0]"])


def test_missing_data_is_an_error_before_compute(tmp_path):
    dag = load_dag(ROOT / "dags" / "smoke.yaml", [f"datasets.fashion-mnist.root={tmp_path / 'nothing'}"])
    with pytest.raises(DataError, match="holds no prepared data .* run `harness data prepare fashion-mnist"):
        build_plan(dag)


def test_plan_trains_each_model_once_and_keys_follow_inputs(shards):
    nodes = build_plan(_smoke(shards))
    by_stage = {s: [n for n in nodes if n.stage == s] for s in ("pretrain", "finetune", "evaluate", "attack")}
    assert [len(v) for v in by_stage.values()] == [1, 4, 4, 14]
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
    assert moved and all(n.stage == "attack" and n.axes["attack"] == "pgd" for n in moved if n.stage != "primary")
    assert {n.axes["task"] for n in moved if n.stage == "primary"} == {"classification"}  # bp's budget reads pgd

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


MISSPELT = [  # (--set that misspells a key, the key as the error must name it, the name it must suggest)
    ("finetune.lr_backbon=1.0e-4", "finetune.lr_backbon", "lr_backbone"),
    ("pretrain.epoch=3", "pretrain.epoch", "epochs"),
    ("finetune.weight_decy=0", "finetune.weight_decy", "weight_decay"),
    ("datasets.fm.target_clases=[1]", "datasets.fm.target_clases", "target_classes"),
    ("datasets.fm.train_limt=10", "datasets.fm.train_limt", "train_limit"),
    ("tasks.hashing.bit=16", "tasks.hashing.bit", "bits"),
    ("attacks.0.param={steps: 2}", "attacks[0].param", "params"),
    ("attacks.0.params.step=2", "attacks[0].params.step", "steps"),
    ("attacks.1.params.restart=2", "attacks[1].params.restart", "restarts"),
    ("attacks.2.params.colour=2", "attacks[2].params.colour", None),
    ("attacks.0.batchsize=8", "attacks[0].batchsize", "batch_size"),
    ("resources.finetune.gpus=1", "resources.finetune.gpus", "gpu"),
    ("resources.atack={cpu: 1}", "resources.atack", "attack"),
    ("evaluate.diagnostic_image=10", "evaluate.diagnostic_image", "diagnostic_images"),
    ("seed=[1]", "seed", "seeds"),
    ("rule=[bp]", "rule", "rules"),
    ("finetune_by_cel={}", "finetune_by_cel", "finetune_by_cell"),
    ("max_concurent=2", "max_concurent", "max_concurrent"),
]


@pytest.mark.parametrize("change,key,suggestion", MISSPELT, ids=[m[1] for m in MISSPELT])
def test_a_misspelt_key_is_named_and_the_right_one_suggested(tmp_path, change, key, suggestion):
    spec = {"experiment": "t", "datasets": {"fm": {"root": "data/fm"}},
            "tasks": {"classification": {}, "hashing": {}},
            "attacks": [{"name": "pgd", "eps": [0.1]}, {"name": "apgd", "eps": [0.1]},
                        {"name": "hsja", "eps": [0.1]}]}
    path = _write(tmp_path, spec)
    with pytest.raises(ConfigError) as info:
        load_dag(path, [change])
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: unknown key; allowed: "), message
    if suggestion is None:  # nothing close: no guess
        assert "did you mean" not in message, message
    else:
        assert message.endswith(f"(did you mean {suggestion!r}?)"), message
    assert message.count("\n") == 0


@pytest.mark.parametrize("change,message", [
    ({"task": {"name": "hashing", "bitz": 3}}, "task.bitz: unknown key; allowed: bits, loss, topk, name (did you mean "
                                               "'bits'?)"),
    ({"task": {"name": "hashin"}}, "task.name: unknown task 'hashin'; known tasks: classification, hashing (did you "
                                   "mean 'hashing'?)"),
    ({"finetune": {"lr_hed": 1.0}}, "finetune.lr_hed: unknown key; allowed: epochs, batch_size, lr_backbone, lr_head, "
                                    "weight_decay (did you mean 'lr_head'?)"),
    ({"backbone": "resnet19"}, "backbone: unknown name 'resnet19'; allowed: alexnet, resnet18, vgg16 (did you mean "
                               "'resnet18'?)"),
    ({"data": {"root": "x", "pad": -1}}, "data.pad: -1 is out of range: at least 0"),
    ({"device": "gpu"}, "device: 'gpu'; allowed: auto, cpu, cuda, cuda:N"),
])
def test_stage_configs_are_checked_by_the_same_sections(change, message):
    from workloads.config import stage_config

    with pytest.raises(ConfigError) as info:
        stage_config({"data": {"root": "x"}, **change}, "cfg.yaml")
    assert str(info.value) == f"cfg.yaml: {message}"


def test_the_committed_json_schema_is_current_and_describes_every_section():
    import json

    from harness.planning.dag import json_schema

    committed = (ROOT / "dags" / "schema.json").read_text()
    assert committed == json_schema(), "dags/schema.json is stale: run `harness schema` and commit it"
    schema = json.loads(committed)
    text = json.dumps(schema)
    for name in ("fgsm", "pgd", "apgd", "autoattack", "square", "boundary", "hsja", "hag", "sdha", "usf", "brsf",
                 "vgg16", "alpha_factor", "max_gradient_eval_steps", "lr_backbone", "diagnostic_images"):
        assert f'"{name}"' in text, name
    assert "Adam learning rate of the new head" in text  # field docstrings become descriptions for editors
    for dag in sorted((ROOT / "dags").glob("*.yaml")):
        assert dag.read_text().startswith("# yaml-language-server: $schema=schema.json\n"), dag.name


def test_a_dataset_sets_its_own_task_options_and_only_for_tasks_the_dag_trains(tmp_path):
    dag = load_dag(ROOT / "dags" / "paper-retrieval.yaml",
                   [f"datasets.{d}.root={tmp_path / d}" for d in ("cifar10", "nuswide21", "coco", "imagenet100")])
    topk = {n.axes["dataset"]: n.config.task.topk for n in build_plan(dag, require_data=False)
            if n.stage == "finetune"}
    assert topk == {"cifar10": None, "nuswide21": 5000, "coco": 5000, "imagenet100": 1000}  # the field's mAP@k
    spec = {"experiment": "t", "tasks": {"classification": {}},
            "datasets": {"fm": {"root": "data/fm", "tasks": {"hashing": {"topk": 10}}}}}
    with pytest.raises(ConfigError, match=r"datasets\.fm\.tasks\.hashing: this DAG does not train 'hashing'"):
        load_dag(_write(tmp_path, spec))


def test_the_node_keys_of_the_default_dag_are_pinned():
    """A node's key names its result in every run store there is: a change of how nodes are planned or typed must
    not change one. tests/default_keys.json holds the keys the planner gave before harness/ was in rooms (its
    dataset not prepared: a manifest would add its own hash), with the primary-budget nodes added since and the
    convergence re-runs that read them (the re-run's budget became a run-time input), and the attack nodes as the
    DAG's attacks changed (every attack at every budget on 200 images, FMN): the training nodes' keys never moved."""
    import json

    pinned = json.loads((ROOT / "tests" / "default_keys.json").read_text())
    dag = load_dag(ROOT / "dags" / "default.yaml", ["datasets.fashion-mnist.root=/nonexistent/fashion-mnist"])
    assert {n.label: n.key for n in build_plan(dag, require_data=False)} == pinned
