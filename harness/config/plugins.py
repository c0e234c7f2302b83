"""Bring your own without forking: a user's modules, imported by name before anything reads a registry.

    plugins: [my_pkg.rules, my_pkg.attacks]           # in a DAG
    harness run dags/mine.yaml --plugin my_pkg.rules  # or on the command line (any command)

Importing a module runs its `register_*` calls, so the rules, attacks, backbones, dataset formats, tasks and stages
it declares join the registries the way the built-in ones do (timm's and lm-evaluation-harness's way of taking
users' models and tasks). `harness run` imports them on every Ray worker too, and ships their code with the job
(`shipped`), so a cluster's nodes need not have them installed.
"""

from __future__ import annotations

import importlib
import re
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from workloads.errors import ConfigError

MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_loaded: dict[str, ModuleType] = {}


def load_plugins(names: Iterable[str], where: str = "--plugin") -> list[ModuleType]:
    """Import each module of `names` (once per process); a module that cannot be found, or raises while it is
    imported, is a ConfigError naming it and `where` it was asked for."""
    out = []
    for name in names:
        if not MODULE.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a module name: dotted Python names, e.g. my_pkg.rules")
        if name not in _loaded:
            try:
                _loaded[name] = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name is not None and name != exc.name and not name.startswith(f"{exc.name}."):
                    raise ConfigError(f"{where}: plugin {name!r} needs module {exc.name!r}, which is not installed "
                                      "here") from None
                raise ConfigError(f"{where}: plugin {name!r} cannot be imported ({exc}); install its package or put "
                                  "the folder holding it on PYTHONPATH") from None
            except Exception as exc:  # noqa: BLE001  (the plugin's own code failed: say where, keep its traceback)
                tail = "".join(traceback.format_exception(exc)[-3:]).strip()
                raise ConfigError(f"{where}: plugin {name!r} failed while it was imported: {tail}") from None
        out.append(_loaded[name])
    return out


def loaded() -> list[str]:
    """The plugins this process has imported, in order."""
    return list(_loaded)


def shipped(names: Iterable[str]) -> list[str]:
    """The code Ray ships to its workers for these plugins (`runtime_env["py_modules"]`): the folder of each one's
    top-level package, or the file of a top-level module."""
    out: list[str] = []
    for name in names:
        if name.split(".", 1)[0] in ("harness", "rules", "workloads"):
            continue  # installed wherever the harness runs
        top = sys.modules.get(name.split(".", 1)[0]) or importlib.import_module(name.split(".", 1)[0])
        paths = list(getattr(top, "__path__", []))
        path = paths[0] if len(paths) == 1 else getattr(top, "__file__", None)
        if path is None:
            raise ConfigError(f"plugin {name!r}: its package {top.__name__!r} spans several folders; make it one "
                              "package folder so Ray can ship it")
        if str(Path(path)) not in out:
            out.append(str(Path(path)))
    return out
