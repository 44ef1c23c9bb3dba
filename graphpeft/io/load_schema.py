"""Type-checking the JSON records an adapter folder holds (PEFT's ``adapter_config.json``, graphpeft's manifest).

A schema maps each key a record may hold to a :class:`Field`: the JSON kinds it accepts, a check of its
value, and, for a key graphpeft does not model, the values that are harmless to ignore (PEFT's default
and its equivalents). :func:`check_record` walks one record against its schema and raises a
:class:`~graphpeft.errors.LoadError` that names the file, the key and what was expected; the loader
calls no ``isinstance`` on JSON values of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import LoadError, did_you_mean


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# JSON kinds by the name an error message uses for them. Numbers are finite (Python's json reads
# NaN and Infinity); true/false are never integers.
KINDS: dict[str, Callable[[Any], bool]] = {
    "integer": _is_int,
    "number": _is_number,
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "list of strings": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "list of integers": lambda v: isinstance(v, list) and all(_is_int(i) for i in v),
    "list of objects": lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v),
}


@dataclass(frozen=True)
class Field:
    """One key of a record.

    ``kinds``: the accepted JSON kinds (names from :data:`KINDS`). ``check``: the problem with a
    well-typed value, or None. ``inert``: set for a key graphpeft does not model: the values that
    change nothing (any other value is refused); ``why`` says what the key would change.
    ``required``: the key must be present.
    """

    kinds: tuple[str, ...]
    check: Callable[[Any], str | None] | None = None
    inert: tuple[Any, ...] | None = None
    why: str = ""
    required: bool = False


def field(
    *kinds: str,
    check: Callable[[Any], str | None] | None = None,
    inert: tuple[Any, ...] | None = None,
    why: str = "",
    required: bool = False,
) -> Field:
    return Field(kinds, check, inert, why, required)


def check_record(record: Mapping[str, Any], schema: Mapping[str, Field], where: str, what: str) -> None:
    """Raise LoadError for the first key of ``record`` that ``schema`` does not accept.

    ``where`` names the file (and the place inside it); ``what`` names the record's kind for an
    unknown key ("PEFT's LoraConfig").
    """
    for key, spec in schema.items():
        if spec.required and key not in record:
            raise LoadError(f"{where} is malformed: key {key!r} is missing; it is not {what}, or it was damaged")
    for key, value in record.items():
        if key not in schema:
            raise LoadError(
                f"{where}: unknown key {key!r}{did_you_mean(str(key), schema)}; it is not a field of {what}"
            )
        check_value(value, schema[key], where, key)


def check_value(value: Any, spec: Field, where: str, key: str) -> None:
    if not any(KINDS[kind](value) for kind in spec.kinds):
        raise LoadError(f"{where}: key {key!r} must be {' or '.join(spec.kinds)}, got {value!r} ({_json_kind(value)})")
    if spec.inert is not None and not any(_same(value, inert) for inert in spec.inert):
        because = f": {spec.why}" if spec.why else ""
        raise LoadError(
            f"{where} sets {key}={value!r}, which graphpeft does not support{because}; "
            f"graphpeft accepts only {' or '.join(repr(v) for v in spec.inert)} there"
        )
    problem = spec.check(value) if spec.check is not None and value is not None else None
    if problem:
        shown = f" = {value!r}" if len(repr(value)) <= 60 else ""
        raise LoadError(f"{where}: key {key!r}{shown} {problem}")


def _same(value: Any, inert: Any) -> bool:
    """Equal and of the same JSON kind (``0`` is not ``False``)."""
    return type(value) is type(inert) and value == inert


def _json_kind(value: Any) -> str:
    for kind in ("boolean", "integer", "number", "string", "null", "object", "list"):
        if KINDS[kind](value):
            return kind
    return "non-finite number" if isinstance(value, float) else type(value).__name__


# ---------------------------------------------------------------------- value checks
def positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def probability(value: Any) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def mapping_of(kind: str, check: Callable[[Any], str | None], text: str) -> Callable[[Any], str | None]:
    """A check that every value of an object is of ``kind`` and passes ``check`` (``text`` says so in words)."""

    def values_ok(mapping: dict[str, Any]) -> str | None:
        for name, value in mapping.items():
            if not KINDS[kind](value) or check(value):
                return f"must map names to {text}; {name!r} has {value!r}"
        return None

    return values_ok
