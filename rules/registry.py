"""Name -> rule class. Adding a rule is one file with a `@register_rule` class plus one import in `rules/__init__`."""

from __future__ import annotations

from rules.base import Rule

_RULES: dict[str, type[Rule]] = {}


def register_rule(cls: type[Rule]) -> type[Rule]:
    name = cls.name
    if name in _RULES and _RULES[name] is not cls:
        raise ValueError(f"learning rule {name!r} is registered twice ({_RULES[name].__module__}, {cls.__module__})")
    _RULES[name] = cls
    return cls


def available_rules() -> list[str]:
    return sorted(_RULES)


def ordered_rules() -> list[str]:
    """The rules in registration order (the import order in `rules/__init__`): the order tables list them in."""
    return list(_RULES)


def get_rule(name: str) -> type[Rule]:
    try:
        return _RULES[name]
    except KeyError:
        raise ValueError(
            f"unknown learning rule {name!r}; known rules: {', '.join(available_rules())}"
        ) from None

