"""Settings from files and flags, the same way for every command: YAML mappings merged in order, then KEY=VALUE.

    tree, where = read_tree("dags/default.yaml", ["finetune.epochs=1", "attacks.0.eps=[0,0.1]"], ["best.yaml"])

Keys are dotted paths; list items go by index; values are YAML (`1`, `1e-3` is a string in YAML 1.1: write
`1.0e-3`, `[0, 0.1]`, `null`). Nothing is validated here: the schema of the section does that after.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from workloads.errors import ConfigError


def read_mapping(path: str | Path, what: str) -> dict:
    """The YAML mapping in `path`; `what` ("DAG file", "override file", ...) names it in errors."""
    try:
        value = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return value


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where in the file and what is wrong (PyYAML's own message spans several, with a text excerpt)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return (f"line {mark.line + 1}, column {mark.column + 1}: {getattr(exc, 'problem', None) or 'syntax error'}"
            + (f" ({context})" if context else ""))


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_assignment(item: str, flag: str = "--set") -> tuple[list[str], Any]:
    """`a.b=VALUE` -> (["a", "b"], VALUE parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE (dotted keys, e.g. finetune.epochs=1)")
    try:
        return key.split("."), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag} {item!r}: the value is not valid YAML: {yaml_problem(exc)}") from None


def assign(tree: dict, items: list[str], where: str, flag: str = "--set") -> dict:
    """A copy of `tree` with each `KEY=VALUE` of `items` set; `where` names the file in errors."""
    tree = copy.deepcopy(tree)
    for item in items:
        parts, value = parse_assignment(item, flag)
        node: Any = tree
        for i, part in enumerate(parts):
            last, above = i == len(parts) - 1, ".".join(parts[:i]) or "the top level"
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{where}: {flag} {item!r}: {above} is a list of {len(node)}; index it with "
                                      f"0..{len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"{where}: {flag} {item!r}: {above} is a value, not a section")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}  # a section not written yet, or written empty (`hashing:`)
                node = node[part]
    return tree


def read_tree(path: str | Path, sets: list[str] | None = None, files: list[str] | None = None) -> tuple[dict, str]:
    """The DAG file at `path` with the override `files` (YAML, e.g. what `harness search` writes) merged over it in
    order, then the `--set` values; and how errors name where it came from."""
    where = str(path)
    tree = read_mapping(path, "DAG file")
    for file in files or []:
        tree = deep_merge(tree, read_mapping(file, "override file"))
    if files:
        where = f"{where} (with {', '.join(map(str, files))})"
    return assign(tree, sets or [], where), where
