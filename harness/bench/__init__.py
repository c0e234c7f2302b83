"""`harness bench NAME`: speed as ratios to a baseline run in the same process (this machine is shared and noisy,
so no absolute time is compared across runs).

Each benchmark is one module here that declares `BENCH`, a `Bench`: its settings (the command's flags, with their
defaults, written once), how it runs, its table and what it writes. They import torch and the workloads, never Ray:
the GPU machines `harness bench gpu` runs on have no Ray.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workloads.files import atomic_write_text
from workloads.settings import Section

NAMES = ("rules", "data", "train", "attacks", "noop", "gpu")  # the order `harness bench --help` lists them in
Log = Callable[[str], None]


@dataclass(frozen=True)
class Bench:
    name: str
    help: str
    description: str
    settings: type[Section]
    """Its flags; `out` is where it writes its JSON (or its markdown, with the JSON beside it)."""
    run: Callable[[Section, Log], dict | None]
    """The measurements; None where there is nothing to measure here (said in the table, not an error)."""
    table: Callable[[dict | None], str]
    markdown: Callable[[dict, Path], Path] | None = None
    positional: tuple[str, ...] = ()
    flags: dict[str, dict] = field(default_factory=dict)
    """More argparse keywords for a field (see harness/commands/flags.py)."""


class Timed(Section):
    """The settings of every benchmark that times the rules against a baseline in interleaved rounds."""

    rules: list[str] | None = None
    """Comma list (default: every registered rule)."""
    device: str = "cpu"
    """cpu, cuda, cuda:1, ..."""
    seed: int = 0


def get(name: str) -> Bench:
    return importlib.import_module(f"harness.bench.{name}").BENCH


def write_json(result: dict, path: str | Path) -> Path:
    return atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def chosen_rules(requested: list[str] | None) -> list[str]:
    """The requested rules (default: every registered one), checked before any model is built."""
    import rules
    from workloads.errors import InputError, unknown_name

    for name in requested or []:
        if name not in rules.available_rules():
            raise InputError(f"--rules: {unknown_name('learning rule', name, rules.available_rules(), 'rules')}")
    return requested or rules.ordered_rules()
