"""Command-line flags made from a settings model: each field is a flag of its name (`max_epochs` -> --max-epochs),
its docstring the help, its default the model's own, written nowhere else.

    add_flags(parser, SearchSettings, skip={"dataset"})
    settings = from_flags(args, SearchSettings, "harness search")   # the flags given, checked by the model

A flag not given is absent from `args` (argparse.SUPPRESS), so the model's default applies. Lists are comma lists
(`--rules bp,usf`), booleans switches (`--control`; `--no-NAME` where the default is on).
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from pydantic import BaseModel

from workloads import settings


def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _scalar(annotation: Any) -> type:
    bare = settings.unwrap(annotation)[0]
    if typing.get_origin(bare) is typing.Literal:
        return type(typing.get_args(bare)[0])
    return bare if bare in (int, float, str, bool) else str


def _converter(annotation: Any):
    bare = settings.unwrap(annotation)[0]
    if typing.get_origin(bare) is list:
        item = _scalar(typing.get_args(bare)[0]) if typing.get_args(bare) else str
        return lambda text: [item(v) for v in csv(text)]
    return _scalar(bare)


def _shown(default: Any) -> str:
    if isinstance(default, list):
        return ",".join(map(str, default)) or "none"
    return "none" if default is None else str(default)


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel], *, skip: set[str] | frozenset = frozenset(),
              positional: tuple[str, ...] = (), extra: dict[str, dict] | None = None, note: str = "") -> None:
    """A flag per field of `model` (but `skip`); `positional` fields are optional positional arguments, `extra`
    more argparse keywords for a field (and `flags`, other spellings: `{"n": {"flags": ("-n", "--images")}}`), `note`
    goes before each help text."""
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        described = " ".join((info.description or "").split())
        described = described[:-1] if described.endswith(".") and not described.endswith("...") else described
        shown = "required" if info.is_required() else f"default: {_shown(info.default)}"
        if "default:" not in described:  # a docstring that words its default says it better
            described = f"{described} ({shown})" if described else f"({shown})"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": note + described}
        kwargs.update((extra or {}).get(name, {}))
        spelled = kwargs.pop("flags", None)
        if name in positional:
            kwargs.pop("dest")
            parser.add_argument(name, nargs="?", type=_converter(info.annotation), **kwargs)
            continue
        flags = spelled or (f"--{name.replace('_', '-')}",)
        if settings.unwrap(info.annotation)[0] is bool:
            kwargs.setdefault("action", argparse.BooleanOptionalAction if info.default else "store_true")
        elif "action" not in kwargs:
            kwargs["type"] = _converter(info.annotation)
            kwargs.setdefault("metavar", name.upper())
        parser.add_argument(*flags, **kwargs)


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict:
    """The fields of `model` given as flags."""
    return {k: getattr(args, k) for k in model.model_fields if hasattr(args, k)}


def from_flags(args: argparse.Namespace, model: type[BaseModel], where: str, **more: Any) -> BaseModel:
    """The flags given for `model` (and `more`), validated by it."""
    return settings.validate(model, {**given(args, model), **more}, where)
