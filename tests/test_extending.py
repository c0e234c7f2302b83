"""docs/extending.md is true: each example is one file in a package of the user's, outside the repository, plus one
line naming it (a DAG's `plugins`, or `--plugin`), and then it works everywhere: the registries, the DAG schema,
validation with its did-you-mean, the plan and its cost, the command line, a run on Ray and the report.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n# file: (\S+)\n(.*?)```", re.S)
PLUGINS = ["my_ext.scf", "my_ext.rfgsm", "my_ext.resnet34", "my_ext.npz", "my_ext.smoothed", "my_ext.calibration"]


def write_package(folder: Path) -> Path:
    """The docs' examples as the package `my_ext` in `folder`; returns `folder` (what goes on PYTHONPATH)."""
    files = dict(BLOCK.findall((ROOT / "docs" / "extending.md").read_text()))
    assert sorted(files) == sorted(f"{m.replace('.', '/')}.py" for m in PLUGINS)
    (folder / "my_ext").mkdir(parents=True)
    (folder / "my_ext" / "__init__.py").write_text("")
    for path, body in files.items():
        (folder / path).write_text(body)
    return folder


def write_npz(folder: Path, n_train: int = 60, n_test: int = 30) -> Path:
    """Fashion-MNIST-shaped arrays under the names the docs' adapter is told with --x-key/--y-key."""
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = (g.integers(0, 60, (n, 28, 28)) + 19 * labels[:, None, None]).astype(np.uint8)  # learnable
        np.savez(folder / f"{split}.npz", images=images, labels=labels)
    return folder


def with_path(ext: Path, env: dict | None = None) -> dict:
    """The environment with `ext` first on PYTHONPATH (the user's package is importable; nothing else moves)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ext), env.get("PYTHONPATH")) if p)
    return env


def harness(*args: str, cwd: Path, ext: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = with_path(ext)
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def dag_text(shards: Path, extra: str = "") -> str:
    return f"""
experiment: ext
plugins: [{', '.join(PLUGINS)}]
device: cpu
datasets:
  mine: {{root: {shards}, source_classes: [0, 1, 2, 3, 4], target_classes: [5, 6, 7, 8, 9], pad: 2,
          train_limit: 32, test_limit: 16}}
tasks: {{classification: {{}}, smoothed: {{smoothing: 0.2}}}}
rules: [bp, scf]
pretrain: {{epochs: 1, batch_size: 16}}
finetune: {{epochs: 1, batch_size: 16}}
evaluate: {{diagnostic_images: 8}}
calibration: {{bins: 5}}
attacks:
  - {{name: rfgsm, sources: [rule, exact], eps: [0, 0.1], n: 8, batch_size: 8}}
  - {{name: pgd, sources: [rule, exact], eps: [0, 0.1], n: 8, batch_size: 8, params: {{steps: 2}}}}
{extra}"""


CHECK = r'''
import sys
import torch
import rules
from harness.planning.cost import cost_by_stage, dataset_sizes
from harness.planning.dag import json_schema, load_dag
from harness.planning.plan import build_plan
from harness.stages import STAGES
from workloads import backbones
from workloads.attacks import attack, get_attack
from workloads.checkpoint import Loaded
from workloads.errors import ConfigError
from workloads.tasks import get_task

# nothing is registered yet: the harness is imported, and the DAG's `plugins` bring the rest in
assert "scf" not in rules.available_rules() and "calibration" not in STAGES.names()
dag = load_dag(DAG)
assert rules.ordered_rules()[-1] == "scf" and get_task("smoothed").kind == "classification"
assert STAGES.get("calibration").group == "evaluate" and get_attack("rfgsm").single_step

# the rule: B = sign(W) under the handle, gradients flow
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
handle = rules.attach(net, "scf", seed=0)
x = torch.rand(2, 3, 8, 8, requires_grad=True)
net(x).sum().backward()
assert torch.equal(handle.feedback("0"), torch.sign(net[0].weight.detach())) and x.grad.abs().sum() > 0

# the backbone
assert backbones.build("resnet34", 7).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 7)

# the plan: the new stage's nodes and the new attack's, with their cost; the schema knows every name
nodes = build_plan(dag)
count = {s: sum(n.stage == s for n in nodes) for s in ("finetune", "calibration", "attack")}
assert count == {"finetune": 4, "calibration": 4, "attack": 16}, count
assert {n.axes["task"] for n in nodes if n.stage == "calibration"} == {"classification", "smoothed"}
sizes, sides = dataset_sizes(dag.config, dag.path)
cost = cost_by_stage(nodes, sizes, sides, None)
assert cost["calibration"]["nodes"] == 4 and cost["calibration"]["pflop"] > 0
assert list(cost).index("calibration") < list(cost).index("attack")  # its level runs before the attacks
schema = json_schema()
for name in ("scf", "rfgsm", "resnet34", "smoothed", "calibration", "alpha_factor"):
    assert f'"{name}"' in schema, name
try:
    load_dag(DAG, ["attacks.0.params.alpha_facter=0.3"])
    raise AssertionError("a misspelt parameter of the new attack was accepted")
except ConfigError as exc:
    assert "attacks[0].params.alpha_facter: unknown key" in str(exc) and "did you mean 'alpha_factor'?" in str(exc), exc
try:
    load_dag(DAG, ["calibration.bins=1"])
    raise AssertionError("the new stage's section is not checked")
except ConfigError as exc:
    assert "calibration.bins: 1 is out of range" in str(exc), exc

# the attack, through the harness's attack loop
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
xs, ys = torch.rand(6, 3, 8, 8), torch.randint(0, 3, (6,))
loaded = Loaded(model, rules.attach(model, "scf"), get_task("smoothed")(3), {}, {})
rows = attack(loaded, "rfgsm", "exact", [0, 0.3], [(xs, ys)])
assert rows[0]["robust_acc"] == rows[0]["clean_acc"] and rows[1]["robust_acc"] <= rows[0]["robust_acc"]
assert 0 < rows[1]["linf"] <= 0.3 + 1e-6
print("EXTENDED OK")
'''


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """The docs' package, and a dataset prepared through its adapter with the flags its options made."""
    work = tmp_path_factory.mktemp("ext")
    ext = write_package(work / "ext")
    help_text = harness("--plugin", "my_ext.npz", "data", "prepare", "--help", cwd=work, ext=ext)
    assert help_text.returncode == 0 and "--x-key" in help_text.stdout and "--y-key" in help_text.stdout
    prepared = harness("--plugin", "my_ext.npz", "data", "prepare", "npz", "--src", str(write_npz(work / "src")),
                       "--out", str(work / "shards"), "--x-key", "images", "--y-key", "labels", cwd=work, ext=ext)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    (work / "dag.yaml").write_text(dag_text(work / "shards"))
    return work, ext


def test_the_documented_extensions_are_one_file_each_and_plug_in(extended):
    work, ext = extended
    done = subprocess.run([sys.executable, "-c", f"DAG = {str(work / 'dag.yaml')!r}\n{CHECK}"], cwd=work,
                          env=with_path(ext), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "EXTENDED OK" in done.stdout, done.stderr[-4000:]
    schema = harness("--plugin", "my_ext.scf", "schema", "--out", str(work / "schema.json"), cwd=work, ext=ext)
    assert schema.returncode == 0 and '"scf"' in (work / "schema.json").read_text(), schema.stderr[-2000:]
    bad = harness("--plugin", "my_ext.nope", "schema", cwd=work, ext=ext)
    assert bad.returncode == 2 and "plugin 'my_ext.nope' cannot be imported" in bad.stderr, bad.stderr[-2000:]
    (ext / "my_ext" / "needy.py").write_text("import not_installed_anywhere  # noqa\n")
    needy = harness("--plugin", "my_ext.needy", "schema", cwd=work, ext=ext)
    assert needy.returncode == 2, needy.stderr[-2000:]
    assert "plugin 'my_ext.needy' needs module 'not_installed_anywhere', which is not installed here" in needy.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_a_dag_of_plugins_runs_on_ray_and_its_report_has_the_new_task_and_stage(extended):
    work, ext = extended
    run = harness("run", str(work / "dag.yaml"), "--out", str(work / "out"), "--results", str(work / "results"),
                  cwd=work, ext=ext)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "ran: pretrain 1, finetune 4, evaluate 4, calibration 4, attack 16" in run.stderr, run.stderr[-2000:]
    results = work / "results"
    import polars as pl

    verdicts = pl.read_csv(results / "verdicts.csv")
    smoothed = verdicts.filter((pl.col("task") == "smoothed") & (pl.col("rule") == "scf"))
    assert smoothed.height == 1 and smoothed["robustness"][0] not in ("", None), verdicts
    assert "**scf** (mine/resnet18/smoothed, seed 0, eps " in (results / "README.md").read_text()
    calibration = pl.read_csv(results / "calibration.csv")
    assert sorted(calibration["task"].unique().to_list()) == ["classification", "smoothed"]
    assert calibration["ECE"].is_between(0, 1).all()
    robustness = pl.read_csv(results / "robustness.csv")  # two tasks of one kind: the table says which is which
    assert "task" in robustness.columns and set(robustness["attack"].to_list()) == {"rfgsm", "pgd"}
    # the report on its own, later: the plugins its run logged are imported again, and it is the same report
    again = harness("report", "ext", "--tracking-uri", f"sqlite:///{work / 'out' / 'mlflow.db'}", "--results",
                    str(work / "again"), cwd=work, ext=ext)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("verdicts.csv", "calibration.csv", "robustness.csv", "clean.csv"):
        assert (work / "again" / name).read_text() == (results / name).read_text(), name
