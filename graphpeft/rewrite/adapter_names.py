"""Adapter names: what a name may be (names become parameter paths and folder names), and the reserved name
``__base__`` that stands for the base model in a mixed-adapter batch."""

from __future__ import annotations

from typing import Any

from ..errors import AdapterError

BASE = "__base__"  # the base model's slot in a mixed-adapter batch: no adapter may take the name


def adapter_name_list(value: Any, action: str) -> list[str]:
    """``value`` (one adapter name, or a list or tuple of them) as a list of distinct names."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise AdapterError(f"{action} takes an adapter name or a list of adapter names, got {value!r}")
    for name in names:
        if not isinstance(name, str):
            raise AdapterError(f"{action} takes adapter names as strings, got {name!r}")
    for index, name in enumerate(names):
        if name in names[:index]:
            raise AdapterError(f"{action} names {name!r} twice; name each adapter once")
    return list(names)


def check_adapter_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise AdapterError(f"adapter names must be non-empty strings, got {name!r}")
    if name == BASE or "/" in name or "\\" in name or "." in name or name.startswith("-") or not name.isprintable():
        raise AdapterError(
            f"adapter name {name!r} is not allowed: names are used as parameter names and folder names, so they "
            f"may not contain '/', '\\\\' or '.', start with '-', or be {BASE!r}; use letters, digits, '_' and '-'"
        )
