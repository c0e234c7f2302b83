"""DAG specs: a YAML file names the grid axes and per-stage settings; `load_dag` validates all of it before any
compute, with errors that give the file, the key and the allowed values.

    experiment: default
    seeds: [0]
    datasets: {fashion-mnist: {root: data/fashion-mnist, source_classes: [0,1,2,3,4], target_classes: [5,6,7,8,9]}}
    backbones: [resnet18]
    tasks: {classification: {}, hashing: {bits: 32}}
    rules: [bp, usf, frsf, brsf]
    attacks:
      - {name: pgd, sources: [rule, exact, transfer], eps: [0, 0.05, 0.1], n: 200, params: {steps: 5}}
      - {name: boundary, eps: [0, 0.1], n: 20, rules: [bp, frsf]}

Everything else has a default (DEFAULTS below). `--set key=value` overrides use dotted keys; list items by index
(`--set attacks.0.eps=[0,0.1]`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

STAGES = ("pretrain", "finetune", "evaluate", "attack")
MAX_SIDE = 4096

DEFAULTS: dict[str, Any] = {
    "experiment": None,
    "description": "",
    "seeds": [0],
    "device": "auto",
    "weights": None,  # None: a BP pretrain stage on the source classes; "imagenet" or a file: no pretrain stage
    "datasets": None,
    "backbones": ["resnet18"],
    "tasks": {"classification": {}},
    "rules": ["bp", "usf", "frsf", "brsf"],
    "attacks": [],
    "pretrain": {"epochs": 2, "batch_size": 128, "lr": 1e-3, "weight_decay": 5e-4},
    "finetune": {"epochs": 2, "batch_size": 64, "lr_backbone": 1e-5, "lr_head": 1e-4, "weight_decay": 5e-4},
    # fine-tuning settings for some cells only, as `harness tune` writes them:
    # {"DATASET/BACKBONE/TASK/RULE": {lr_head: ..., ...}}, '*' for any; the more specific pattern wins
    "finetune_by_cell": {},
    "evaluate": {"diagnostic_images": 250},
    "resources": {s: {"cpu": 1, "gpu": 0} for s in STAGES},
    "retries": 1,
    "max_concurrent": 0,  # 0: as many trials as the resources allow
}

DATASET_KEYS = {"root": None, "source_classes": None, "target_classes": None, "pad": 0, "image_size": None,
                "train_limit": None, "test_limit": None, "db_limit": None,
                # image counts for `harness plan` before the data is prepared: {train, test, database, ...}
                "sizes": None,
                # per-dataset fine-tuning overrides (the paper: 10 epochs on ImageNet and NUS-WIDE, 20 elsewhere)
                "finetune": None}
TASK_KEYS = {"classification": {}, "hashing": {"bits": 32, "loss": "csq", "topk": None}}
ATTACK_KEYS = {"name": None, "sources": None, "eps": None, "n": 500, "batch_size": 250, "params": {}, "rules": None,
               "tasks": None}


class DagError(ValueError):
    """A DAG file that cannot run; the message names the file, the key and what is allowed."""


@dataclass
class Dag:
    path: str
    spec: dict

    @property
    def experiment(self) -> str:
        return self.spec["experiment"]

    def __getitem__(self, key: str) -> Any:
        return self.spec[key]


def apply_overrides(spec: dict, overrides: list[str], where: str) -> dict:
    spec = copy.deepcopy(spec)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DagError(f"{where}: --set {item!r}: expected KEY=VALUE (dotted keys, e.g. finetune.epochs=1)")
        node: Any = spec
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise DagError(f"{where}: --set {item!r}: {'.'.join(parts[:i]) or 'top'} is a list of {len(node)};"
                                   f" index it with 0..{len(node) - 1}")
                if last:
                    node[int(part)] = yaml.safe_load(value)
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = yaml.safe_load(value)
                else:
                    node = node.setdefault(part, {})
            else:
                raise DagError(f"{where}: --set {item!r}: {'.'.join(parts[:i])} is a value, not a section")
    return spec


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where in the file and what is wrong (PyYAML's own message spans several, with a text excerpt)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return (f"line {mark.line + 1}, column {mark.column + 1}: {getattr(exc, 'problem', None) or 'syntax error'}"
            + (f" ({context})" if context else ""))


def _override_file(path: str | Path) -> dict:
    where = str(path)
    try:
        value = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise DagError(f"override file {where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DagError(f"override file {where} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise DagError(f"override file {where} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(value, dict):
        raise DagError(f"override file {where}: the top level must be a mapping of DAG keys")
    return value


def load_dag(path: str | Path, overrides: list[str] | None = None, files: list[str] | None = None) -> Dag:
    """The validated DAG at `path`, with override `files` (YAML, e.g. what `harness tune` writes) merged over it
    in order, then the `--set` `overrides`."""
    where = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DagError(f"DAG file {where} does not exist (the shipped ones are in dags/)") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise DagError(f"DAG file {where} cannot be read: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DagError(f"{where} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise DagError(f"{where}: the top level must be a mapping of keys (experiment, datasets, rules, ...)")
    from workloads.train import merge  # the deep merge the stage configs use

    for file in files or []:
        raw = merge(raw, _override_file(file))
    if files:
        where = f"{where} (with {', '.join(map(str, files))})"
    raw = apply_overrides(raw, overrides or [], where)
    return Dag(str(path), validate(raw, where))


def _fail(where: str, key: str, msg: str) -> DagError:
    return DagError(f"{where}: {key}: {msg}")


def _names(value: Any, where: str, key: str, known: list[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(where, key, f"expected a non-empty list of names from: {', '.join(known)}")
    for v in value:
        if v not in known:
            raise _fail(where, key, f"unknown name {v!r}; allowed: {', '.join(known)}")
    if len(set(value)) != len(value):
        raise _fail(where, key, "a name is listed twice")
    return value


def _number(value: Any, where: str, key: str, kind: type = float, low: float = 0, high: float = math.inf) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not float(value).is_integer()):
        raise _fail(where, key, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value)):
        raise _fail(where, key, f"{value!r} is out of range [{low}, {high}]")
    return kind(value)


def _mapping(value: Any, defaults: dict, where: str, key: str) -> dict:
    """`value` with defaults filled in; a key the section does not know is an error, not silently ignored."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _fail(where, key, f"expected a mapping with keys from: {', '.join(defaults)}")
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise _fail(where, f"{key}.{unknown[0]}", f"unknown key; allowed: {', '.join(defaults)}")
    return {**copy.deepcopy(defaults), **value}


def _classes(value: Any, where: str, key: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise _fail(where, key, "expected a non-empty list of class indices, or null for all classes")
    out = [_number(v, where, f"{key}[{i}]", int, 0, 1e6) for i, v in enumerate(value)]
    if len(set(out)) != len(out):
        raise _fail(where, key, "a class is listed twice")
    return out


def _finetune_override(value: Any, where: str, key: str) -> dict:
    """A partial `finetune` section: only the keys it sets, each checked like the full section's."""
    over = _mapping(value, DEFAULTS["finetune"], where, key)
    counts = ("epochs", "batch_size")
    return {k: _number(over[k], where, f"{key}.{k}", int if k in counts else float, 1 if k in counts else 0,
                       1e9 if k in counts else 10.0) for k in value}


CELL_AXES = ("dataset", "backbone", "task", "rule")


def _finetune_by_cell(spec: dict, where: str) -> dict:
    cells = spec["finetune_by_cell"] or {}
    if not isinstance(cells, dict):
        raise _fail(where, "finetune_by_cell", "expected a mapping 'DATASET/BACKBONE/TASK/RULE' -> {lr_head: ...}")
    known = {"dataset": list(spec["datasets"]), "backbone": spec["backbones"], "task": list(spec["tasks"]),
             "rule": spec["rules"]}
    out = {}
    for pattern, value in cells.items():
        key = f"finetune_by_cell.{pattern}"
        parts = str(pattern).split("/")
        if len(parts) != len(CELL_AXES):
            raise _fail(where, key, "expected DATASET/BACKBONE/TASK/RULE, each a name of this DAG or '*'")
        for axis, part in zip(CELL_AXES, parts, strict=True):
            if part != "*" and part not in known[axis]:
                raise _fail(where, key, f"{axis} {part!r} is not in this DAG; allowed: {', '.join(known[axis])}, *")
        out[str(pattern)] = _finetune_override(value, where, key)
    return out


def cell_finetune(spec: dict, cell: dict) -> dict:
    """The fine-tuning settings of one cell: the DAG's, the dataset's, then the matching finetune_by_cell
    patterns from the least to the most specific."""
    out = {**spec["finetune"], **(spec["datasets"][cell["dataset"]].get("finetune") or {})}
    matching = []
    for i, (pattern, value) in enumerate(spec["finetune_by_cell"].items()):
        parts = pattern.split("/")
        if all(p in ("*", str(cell[a])) for a, p in zip(CELL_AXES, parts, strict=True)):
            matching.append((sum(p != "*" for p in parts), i, value))
    for _, _, value in sorted(matching, key=lambda m: m[:2]):
        out.update(value)
    return out


def validate(raw: dict, where: str) -> dict:
    """The full spec with defaults filled in, or a DagError naming the first problem."""
    import rules
    from workloads import backbones
    from workloads.attacks import GRADIENT_SOURCES, check_eps, get_attack
    from workloads.attacks import validate as validate_attack

    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise _fail(where, unknown[0], f"unknown key; allowed: {', '.join(DEFAULTS)}")
    spec = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(raw)}
    exp = spec["experiment"]
    if not isinstance(exp, str) or not exp or not all(c.isalnum() or c in "-_." for c in exp):
        raise _fail(where, "experiment", "required: a name of letters, digits, '-', '_' or '.' (it names folders)")
    seeds = spec["seeds"] if isinstance(spec["seeds"], list) else [spec["seeds"]]
    if not seeds:
        raise _fail(where, "seeds", "expected a non-empty list of integers")
    spec["seeds"] = [_number(s, where, f"seeds[{i}]", int, 0, 2**31 - 1) for i, s in enumerate(seeds)]
    if spec["device"] not in ("auto", "cpu", "cuda") and not str(spec["device"]).startswith("cuda:"):
        raise _fail(where, "device", f"{spec['device']!r}; allowed: auto, cpu, cuda, cuda:N")
    if spec["weights"] not in (None, "imagenet") and not isinstance(spec["weights"], str):
        raise _fail(where, "weights", "null (pretrain with BP), imagenet, or a path to a state dict")

    datasets = spec["datasets"]
    if not isinstance(datasets, dict) or not datasets:
        raise _fail(where, "datasets", "required: a mapping name -> {root: prepared shards folder, ...}")
    for name in list(datasets):
        d = _mapping(datasets[name], DATASET_KEYS, where, f"datasets.{name}")
        if not isinstance(d["root"], str) or not d["root"]:
            raise _fail(where, f"datasets.{name}.root", "required: the folder written by `harness data prepare`")
        root = Path(d["root"]).expanduser()
        if not root.is_absolute():  # relative to the working directory, as on the command line
            root = Path.cwd() / root
        d["root"] = str(root)
        for key in ("source_classes", "target_classes"):
            d[key] = _classes(d[key], where, f"datasets.{name}.{key}")
        if d["source_classes"] and d["target_classes"] and set(d["source_classes"]) & set(d["target_classes"]):
            raise _fail(where, f"datasets.{name}", "source_classes and target_classes overlap: a transfer split needs "
                        "disjoint classes")
        d["pad"] = _number(d["pad"], where, f"datasets.{name}.pad", int, 0, 512)
        if d["image_size"] is not None:  # a side, not a count: beyond 4096 px it is a typo, and would exhaust memory
            d["image_size"] = _number(d["image_size"], where, f"datasets.{name}.image_size", int, 1, MAX_SIDE)
        for key in ("train_limit", "test_limit", "db_limit"):
            if d[key] is not None:
                d[key] = _number(d[key], where, f"datasets.{name}.{key}", int, 1, 1e9)
        if d["finetune"] is not None:
            d["finetune"] = _finetune_override(d["finetune"], where, f"datasets.{name}.finetune")
        if d["sizes"] is not None:
            allowed = {"train": 0, "test": 0, "database": 0, "train_source": 0, "test_source": 0, "image_size": 0}
            d["sizes"] = {k: _number(v, where, f"datasets.{name}.sizes.{k}", int, 0,
                                     MAX_SIDE if k == "image_size" else 1e10)
                          for k, v in _mapping(d["sizes"], allowed, where, f"datasets.{name}.sizes").items()
                          if k in d["sizes"]}
        datasets[name] = d

    spec["backbones"] = _names(spec["backbones"], where, "backbones", backbones.available_backbones())
    tasks = spec["tasks"]
    if isinstance(tasks, list):
        tasks = {t: {} for t in tasks}
    if not isinstance(tasks, dict) or not tasks:
        raise _fail(where, "tasks", f"expected a mapping of task -> options, tasks: {', '.join(TASK_KEYS)}")
    for name in list(tasks):
        if name not in TASK_KEYS:
            raise _fail(where, f"tasks.{name}", f"unknown task; allowed: {', '.join(TASK_KEYS)}")
        t = _mapping(tasks[name], TASK_KEYS[name], where, f"tasks.{name}")
        if name == "hashing":
            t["bits"] = _number(t["bits"], where, "tasks.hashing.bits", int, 2, 4096)
            if t["loss"] not in ("csq", "dpsh"):
                raise _fail(where, "tasks.hashing.loss", f"{t['loss']!r}; allowed: csq, dpsh")
            if t["topk"] is not None:
                t["topk"] = _number(t["topk"], where, "tasks.hashing.topk", int, 1, 1e9)
        tasks[name] = t
    spec["tasks"] = tasks
    spec["rules"] = _names(spec["rules"], where, "rules", rules.available_rules())
    spec["finetune_by_cell"] = _finetune_by_cell(spec, where)

    for stage in ("pretrain", "finetune", "evaluate"):
        s = _mapping(spec[stage], DEFAULTS[stage], where, stage)
        for key, value in s.items():
            low, kind = (1, int) if key in ("epochs", "batch_size", "diagnostic_images") else (0, float)
            s[key] = _number(value, where, f"{stage}.{key}", kind, low, 1e9 if kind is int else 10.0)
        spec[stage] = s
    res = _mapping(spec["resources"], DEFAULTS["resources"], where, "resources")
    for stage in STAGES:
        r = res[stage] if isinstance(res[stage], dict) else None
        if r is None or set(r) - {"cpu", "gpu"}:
            raise _fail(where, f"resources.{stage}", "expected {cpu: N, gpu: fraction}")
        res[stage] = {"cpu": _number(r.get("cpu", 1), where, f"resources.{stage}.cpu", float, 0.01, 1024),
                      "gpu": _number(r.get("gpu", 0), where, f"resources.{stage}.gpu", float, 0, 64)}
    spec["resources"] = res
    spec["retries"] = _number(spec["retries"], where, "retries", int, 0, 100)
    spec["max_concurrent"] = _number(spec["max_concurrent"], where, "max_concurrent", int, 0, 100000)

    attacks = spec["attacks"] or []
    if not isinstance(attacks, list):
        raise _fail(where, "attacks", "expected a list of {name, eps, sources, n, params, rules, tasks}")
    seen = set()
    for i, a in enumerate(attacks):
        key = f"attacks[{i}]"
        if not isinstance(a, dict):
            raise _fail(where, key, "expected a mapping {name, eps, ...}")
        a = _mapping(a, ATTACK_KEYS, where, key)
        try:
            atk = get_attack(a["name"] if isinstance(a["name"], str) else repr(a["name"]))
        except ValueError as exc:
            raise _fail(where, f"{key}.name", str(exc)) from None
        if atk.needs_gradient_source:
            a["sources"] = _names(a["sources"] or list(GRADIENT_SOURCES), where, f"{key}.sources",
                                  list(GRADIENT_SOURCES))
            if "transfer" in a["sources"] and "bp" not in spec["rules"]:
                raise _fail(where, f"{key}.sources", "'transfer' crafts on the BP-fine-tuned sibling: add bp to rules")
        elif a["sources"] not in (None, [], ["none"]):
            raise _fail(where, f"{key}.sources", f"{a['name']!r} queries outputs only; it takes no gradient source")
        else:
            a["sources"] = [None]
        if not isinstance(a["eps"], list):
            raise _fail(where, f"{key}.eps", "required: a list of L-inf budgets in [0, 1], e.g. [0, 0.05, 0.1]")
        try:
            a["eps"] = check_eps(a["eps"])
        except ValueError as exc:
            raise _fail(where, f"{key}.eps", str(exc)) from None
        a["n"] = _number(a["n"], where, f"{key}.n", int, 1, 1e7)
        a["batch_size"] = _number(a["batch_size"], where, f"{key}.batch_size", int, 1, 1e6)
        if not isinstance(a["params"], dict):
            raise _fail(where, f"{key}.params", f"expected a mapping; allowed keys: {', '.join(atk.defaults)}")
        a["rules"] = _names(a["rules"], where, f"{key}.rules", spec["rules"]) if a["rules"] else list(spec["rules"])
        fits = [t for t in spec["tasks"] if t in atk.tasks]
        a["tasks"] = _names(a["tasks"], where, f"{key}.tasks", fits) if a["tasks"] else fits
        if not fits:
            raise _fail(where, f"{key}.name", f"attack {a['name']!r} applies to {', '.join(atk.tasks)} models, and "
                        f"this DAG trains only {', '.join(spec['tasks'])}")
        for task in a["tasks"]:
            for source in a["sources"]:
                try:
                    validate_attack(a["name"], task, source, a["eps"], a["params"])
                except ValueError as exc:
                    raise _fail(where, key, str(exc)) from None
        ident = (a["name"], tuple(a["tasks"]))
        if ident in seen:
            raise _fail(where, key, f"attack {a['name']!r} is listed twice for the same tasks; merge the entries")
        seen.add(ident)
        attacks[i] = a
    spec["attacks"] = attacks
    return spec
