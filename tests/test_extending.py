"""docs/extending.md is true: each example is one new file plus one import line, and then it works everywhere.

The packages are copied, each `# file:` block is written as a new file and each `# register:` line is added to
the `__init__.py` it names; a fresh interpreter then finds the new rule, attack, backbone and dataset format in
the registries, the DAG schema, DAG validation (with its did-you-mean), the plan, and running them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n# (file|register): (\S+)\n(.*?)```", re.S)

CHECK = r'''
import numpy as np, torch
import rules
from harness.dag import json_schema, load_dag
from harness.plan import build_plan
from workloads import backbones
from workloads.attacks import attack, get_attack
from workloads.datasets import ShardReader, prepare
from workloads.errors import ConfigError
from workloads.tasks import get_task
from workloads.checkpoint import Loaded

# the rule: B = sign(W) under the handle, gradients flow, and the report order has it last
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
handle = rules.attach(net, "scf", seed=0)
x = torch.rand(2, 3, 8, 8, requires_grad=True)
net(x).sum().backward()
assert torch.equal(handle.feedback("0"), torch.sign(net[0].weight.detach())) and x.grad.abs().sum() > 0
assert rules.ordered_rules()[-1] == "scf"

# the backbone
assert backbones.build("resnet34", 7).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 7)

# the dataset format: prepared to shards, read back with the same labels
src = Path(WORK) / "npz"
src.mkdir()
g = np.random.default_rng(0)
for split, n in (("train", 40), ("test", 20)):
    np.savez(src / f"{split}.npz", x=g.integers(0, 256, (n, 28, 28), dtype=np.uint8), y=np.arange(n) % 10)
prepare("npz", Path(WORK) / "shards", src=src)
ys = torch.cat([y for _, y in ShardReader(Path(WORK) / "shards", "test", batch_size=8)])
assert ys.tolist() == [i % 10 for i in range(20)]

# the attack, in a DAG with the new rule, backbone and dataset, and in the schema
dag_file = Path(WORK) / "dag.yaml"
dag_file.write_text(f"""
experiment: ext
datasets: {{mine: {{root: {Path(WORK) / 'shards'}}}}}
backbones: [resnet34]
rules: [bp, scf]
attacks: [{{name: mifgsm, eps: [0, 0.1], params: {{steps: 2}}}}]
""")
nodes = build_plan(load_dag(dag_file))
assert {n.axes.get("attack") for n in nodes if n.stage == "attack"} == {"mifgsm"}
assert sum(n.stage == "finetune" for n in nodes) == 2
assert '"mifgsm"' in json_schema() and '"scf"' in json_schema() and '"resnet34"' in json_schema()
try:
    load_dag(dag_file, ["attacks.0.params.step=2"])
    raise AssertionError("a misspelt parameter of the new attack was accepted")
except ConfigError as exc:
    assert "attacks[0].params.step: unknown key" in str(exc) and "did you mean 'steps'?" in str(exc), exc

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
xs, ys = torch.rand(6, 3, 8, 8), torch.randint(0, 3, (6,))
loaded = Loaded(model, rules.attach(model, "scf"), get_task("classification")(3), {}, {})
rows = attack(loaded, "mifgsm", "exact", [0, 0.3], [(xs, ys)], params={"steps": 3})
assert rows[0]["robust_acc"] == rows[0]["clean_acc"] and rows[1]["robust_acc"] <= rows[0]["robust_acc"]
assert 0 < rows[1]["linf"] <= 0.3 + 1e-6 and get_attack("mifgsm").family == "gradient"
print("EXTENDED OK")
'''


def test_the_documented_extensions_are_one_file_and_one_line_each(tmp_path):
    blocks = BLOCK.findall((ROOT / "docs" / "extending.md").read_text())
    files = {path: body for kind, path, body in blocks if kind == "file"}
    registers = [(path, body) for kind, path, body in blocks if kind == "register"]
    assert set(files) == {"rules/scf.py", "workloads/attacks/mifgsm.py", "workloads/backbones/resnet34.py",
                          "workloads/datasets/sources/npz.py"}
    assert len(registers) == len(files) and all(len(body.strip().splitlines()) == 1 for _, body in registers)
    repo = tmp_path / "repo"
    for package in ("harness", "rules", "workloads"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    for path, body in files.items():
        assert not (repo / path).exists(), f"{path} would overwrite a file"
        (repo / path).write_text(body)
    for path, line in registers:
        with open(repo / path, "a") as f:
            f.write(line)
    work = tmp_path / "work"
    work.mkdir()
    script = f"from pathlib import Path\nWORK = {str(work)!r}\n{CHECK}"
    done = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0 and "EXTENDED OK" in done.stdout, done.stderr[-4000:]
