"""The layering holds and docs/architecture.md draws it as it is (tests/architecture.py draws it from the imports)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_the_picture_of_the_layers_is_current():
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "architecture.py"), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, "docs/architecture.md's picture is stale: run `make diagram` and commit it"


def test_no_module_imports_itself_round_a_circle():
    """No import cycle between any two modules of the three packages, TYPE_CHECKING imports included."""
    graph = grimp.build_graph("harness", "workloads", "rules")
    cycles = [(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
              if graph.chain_exists(importer=b, imported=a)]
    assert cycles == []


def test_the_layering_contracts_hold():
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "0 broken" in done.stdout, done.stdout[-3000:]
