"""Typed settings: the base of every section of a DAG or stage config, and the one place errors are worded.

Each section is declared by the code that uses it, with its defaults, ranges and a docstring per field (the
docstrings become the JSON Schema's descriptions, so editors show them): the training stages' in
`workloads/config.py`, a task's options on the task, an attack's parameters on the attack, each stage's DAG
sections on the stage (harness/stages/), the DAG's own keys in harness/config/. Unknown keys are errors
everywhere. `validate(Model, data, where)` turns pydantic's errors into one `ConfigError` line that names the file,
the key, what is allowed, and the nearest valid name.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from workloads.errors import ConfigError, did_you_mean

S = TypeVar("S", bound=BaseModel)

Count = Annotated[int, Field(ge=1, le=10**9)]
Limit = Annotated[int | None, Field(ge=1, le=10**9)]
# learning rates and weight decay: no upper bound (none is principled); a loss that diverges stops its stage with
# a DivergenceError that says so, within the first steps
Rate = Annotated[float, Field(ge=0.0)]


class Section(BaseModel):
    """A settings section: strict types (no "2" for 2, no true for 1), finite numbers, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True,
                              validate_default=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data  # `classification:` with nothing after it, in YAML


class UnionTag:
    """Annotated metadata naming what a union's tag selects (`unknown attack 'pgdd'` rather than `unknown tag`)."""

    def __init__(self, kind: str, plural: str) -> None:
        self.kind, self.plural = kind, plural


def validate(model: type[S], data: Any, where: str) -> S:
    """`data` as a `model`, or a ConfigError `where: key: what is wrong` for the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(model, exc.errors()[0])}") from None


def describe(model: type, error: dict) -> str:
    """One line for one pydantic error: the key as the user wrote it, then what is wrong and what is allowed."""
    loc, kind, value, ctx = error["loc"], error["type"], error.get("input"), error.get("ctx") or {}
    path, at, parent = _walk(model, loc)
    got = _short(value)
    if kind == "extra_forbidden":
        allowed = _fields(parent)
        return f"{path}: unknown key; allowed: {', '.join(allowed)}{did_you_mean(loc[-1], allowed)}"
    if kind == "missing":
        info = _fields(parent).get(loc[-1]) if isinstance(parent, type) else None
        about = info.description.removeprefix("Required: ") if info is not None and info.description else ""
        return f"{path}: required" + (f": {about}" if about else "")
    if kind == "literal_error":
        allowed = [str(a) for a in typing.get_args(unwrap(at)[0])]
        return f"{path}: unknown name {value!r}; allowed: {', '.join(allowed)}{did_you_mean(value, allowed)}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        bare, meta = unwrap(at)
        tags = sorted(t for m in _members(bare) for t in _tags(m))
        name = next((m for m in meta if isinstance(m, UnionTag)), UnionTag("name", "names"))
        key = f"{path}.{ctx['discriminator'].strip(chr(39))}"
        if kind == "union_tag_not_found":
            return f"{key}: required: one of {', '.join(tags)}"
        return f"{key}: unknown {name.kind} {ctx['tag']!r}; known {name.plural}: {', '.join(tags)}" \
               + did_you_mean(ctx["tag"], tags)
    if kind in ("value_error", "assertion_error"):
        exc = ctx.get("error")
        key = getattr(exc, "key", None)
        return f"{path + '.' if path and key else path}{key or ''}{': ' if path or key else ''}{exc}"
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        bound = {"less_than_equal": "at most", "greater_than_equal": "at least", "less_than": "below",
                 "greater_than": "above"}[kind]
        return f"{path}: {got} is out of range: {bound} {next(iter(ctx.values()))}"
    want = {"int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
            "finite_number": "a finite number", "bool_type": "true or false", "string_type": "a string",
            "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
            "too_short": "a longer list", "string_too_short": "a non-empty string"}.get(kind)
    if want is not None:
        keys = _fields(at) if isinstance(at, type) and issubclass(at, BaseModel) else {}
        return f"{path}: expected {want}" + (f" with keys from: {', '.join(keys)}" if keys else "") + f", got {got}"
    return f"{path}: {error['msg']} (got {got})"


def _walk(model: type, loc: tuple) -> tuple[str, Any, Any]:
    """(the key as written, the type at `loc`, the type holding it), stepping over discriminated-union tags."""
    path, t, parent = "", model, None
    for part in loc:
        bare, _ = unwrap(t)
        members = _members(bare)
        if isinstance(part, str) and len(members) > 1 and any(part in _tags(m) for m in members):
            t = next(m for m in members if part in _tags(m))  # a union tag: not a key the user wrote
            continue
        parent, t = t, _child(bare, part)
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path, t, unwrap(parent)[0] if parent is not None else None


def unwrap(t: Any) -> tuple[Any, list]:
    """`t` without Annotated and None-unions, and the Annotated metadata it carried."""
    meta: list = []
    while True:
        if typing.get_origin(t) is Annotated:
            meta += list(t.__metadata__)
            t = t.__origin__
            continue
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if typing.get_origin(t) in (typing.Union, types.UnionType) and len(args) == 1:
            t = args[0]
            continue
        return t, meta


def _members(t: Any) -> list:
    return list(typing.get_args(t)) if typing.get_origin(t) in (typing.Union, types.UnionType) else [t]


def _tags(t: Any) -> list[str]:
    info = _fields(unwrap(t)[0]).get("name")
    bare = unwrap(info.annotation)[0] if info is not None else None
    return [str(a) for a in typing.get_args(bare)] if typing.get_origin(bare) is Literal else []


def _child(t: Any, part: Any) -> Any:
    if isinstance(t, type) and issubclass(t, BaseModel):
        info = t.model_fields.get(part)
        if info is None:
            return None
        # pydantic keeps a field's Annotated metadata (a union's UnionTag) apart from its annotation
        return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    args = typing.get_args(t)
    if typing.get_origin(t) is list and args:
        return args[0]
    if typing.get_origin(t) is dict and len(args) == 2:
        return args[1]
    return None


def _fields(t: Any) -> dict:
    return dict(t.model_fields) if isinstance(t, type) and issubclass(t, BaseModel) else {}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError(f"{value!r}; allowed: auto, cpu, cuda, cuda:N")


Device = Annotated[str, AfterValidator(_device), Field(description="auto (cuda where there is one), cpu, cuda, cuda:N")]


def resolve_device(name: str):  # -> torch.device; torch is imported only here, so settings stay light to load
    """The torch device a `Device` setting names: `auto` is cuda where there is one."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


def one_of(names: list[str]) -> object:
    """A field that takes one of `names` (a registry's): the schema lists them, an error suggests the nearest."""
    return Literal[tuple(names)]
