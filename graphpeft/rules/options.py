"""Typed, validated option schemas for adapter methods.

A method declares its options once (name, type, default, constraint); rule
files, Python ``Rule`` objects and ``apply(**overrides)`` are all checked
against the same schema, so every bad value fails the same way.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RuleError, did_you_mean


@dataclass(frozen=True)
class Option:
    """One method option: ``kind`` is the accepted Python type(s); ``check`` returns
    an error text for a bad value or ``None``; ``choices`` lists the allowed values."""

    kind: type | tuple[type, ...]
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple[Any, ...] | None = None


_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = _BRIEF.maxlong = 60
_BRIEF.maxlevel = 3
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 6


def shown(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, however long or deeply nested the value is."""
    return _BRIEF.repr(value)


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def probability(value: Any) -> str | None:
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def validate_options(schema: Mapping[str, Option], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Fill defaults and check ``given`` against ``schema``.

    ``where`` names the rule (``"rule 'lora' in passes/llama.toml"``) for the message.
    Returns a new dict with every option of the schema.
    """
    if not isinstance(given, Mapping):
        raise RuleError(f"{where}: options must be a mapping of option name to value, got {shown(given)}")
    out = {name: opt.default for name, opt in schema.items()}
    for key, value in given.items():
        if key not in schema:
            raise RuleError(
                f"{where}: unknown key {shown(key)}{did_you_mean(str(key), schema)}; "
                f"valid keys are {', '.join(sorted(schema))}"
            )
        opt = schema[key]
        kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
        # bool is an int subclass: refuse True where a number is meant and vice versa.
        bad_bool = isinstance(value, bool) and bool not in kinds
        if bad_bool or not isinstance(value, kinds):
            raise RuleError(
                f"{where}: key {key!r} must be {_type_name(opt.kind)}, got {shown(value)} ({type(value).__name__})"
            )
        if not _finite(value):
            raise RuleError(f"{where}: key {key!r} = {shown(value)} must be a finite number (not inf or nan)")
        if opt.choices is not None and value not in opt.choices:
            raise RuleError(
                f"{where}: key {key!r} is {shown(value)}{did_you_mean(str(value), map(str, opt.choices))}; "
                f"choose one of {', '.join(repr(c) for c in opt.choices)}"
            )
        if opt.check is not None:
            problem = opt.check(value)
            if problem:
                raise RuleError(f"{where}: key {key!r} = {shown(value)} {problem}")
        # TOML gives lists; one canonical form keeps rules comparable
        out[key] = tuple(value) if isinstance(value, list) and tuple in kinds else value
    return out


def _finite(value: Any) -> bool:
    """No inf or nan in ``value`` (a number, or lists/tuples of them): they turn every output into nan."""
    pending, seen = [value], set()
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, (list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            pending.extend(item)
    return True
