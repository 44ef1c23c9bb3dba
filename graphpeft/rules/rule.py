"""Rules: which graph sites get which adapter.

A :class:`~.pattern.Pattern` selects sites; a :class:`Rule` applies one method to the
sites its patterns select; a :class:`~.rule_set.RuleSet` is one rule file (``passes/*.toml``)
with the model types it serves, its named sites and its rules. TOML and Python
objects are equivalent: ``RuleSet.from_toml(path)`` builds the same objects a
user can write by hand. A rule's options are checked against its method's schema,
found in the method registry (:mod:`.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import RuleError
from .options import shown, validate_options
from .pattern import Pattern
from .registry import get_method

RULE_KEYS = ("name", "method", "targets", "required", "also")
MAX_NAME_LENGTH = 128


def as_tuple(value: Any, kinds: tuple[type, ...], what: str) -> tuple[Any, ...]:
    """One item or a list/tuple of items of ``kinds`` as a tuple."""
    items = (value,) if isinstance(value, kinds) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, kinds) for item in items):
        names = " or ".join(k.__name__ for k in kinds)
        raise RuleError(f"{what} must be a {names} or a list of them, got {shown(value)}")
    return tuple(items)


@dataclass(frozen=True)
class Rule:
    """Apply ``method`` with ``options`` to every site its ``targets`` select.

    ``targets`` holds site names (resolved through the rule file's ``[sites]``) or
    :class:`Pattern` objects. ``required=False`` lets a rule match nothing (used for
    optional heads). ``also`` names other rules of the same file that are applied
    together with this one (``lora`` on a classifier also trains the head).
    """

    name: str
    method: str
    targets: tuple[str | Pattern, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    required: bool = True
    also: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > MAX_NAME_LENGTH:
            raise RuleError(
                f"a rule needs a non-empty string name of at most {MAX_NAME_LENGTH} characters, got {shown(self.name)}"
            )
        where = f"rule {self.name!r}"
        object.__setattr__(self, "targets", as_tuple(self.targets, (str, Pattern), f"{where}: 'targets'"))
        object.__setattr__(self, "also", as_tuple(self.also, (str,), f"{where}: 'also'"))
        if not self.targets:
            raise RuleError(f"{where}: 'targets' is empty; name at least one site or pattern")
        if not isinstance(self.required, bool):
            raise RuleError(f"{where}: 'required' must be True or False, got {shown(self.required)}")
        method = get_method(self.method, where=where)
        object.__setattr__(self, "options", validate_options(method.options, self.options, where))

    def with_options(self, **overrides: Any) -> Rule:
        """A copy with some options replaced (validated like the originals)."""
        return replace(self, options={**self.options, **overrides})

    def to_dict(self) -> dict[str, Any]:
        targets = [t if isinstance(t, str) else t.to_dict() for t in self.targets]
        out = {"name": self.name, "method": self.method, "targets": targets, **dict(self.options)}
        if not self.required:
            out["required"] = False
        if self.also:
            out["also"] = list(self.also)
        return out


def check_unique_names(names: Sequence[str], source: str) -> None:
    """Refuse two rules of one name: ``also``, ``file.toml#name`` and claims find rules by name."""
    seen: set[str] = set()
    twice: list[str] = []
    for name in names:
        if name in seen and name not in twice:
            twice.append(name)
        seen.add(name)
    if twice:
        raise RuleError(
            f"{source}: rule names must be unique; {listed(twice)} {'appears' if len(twice) == 1 else 'appear'} "
            "more than once; rename the copies"
        )


def listed(names: Any, n: int = 8) -> str:
    """The first ``n`` of ``names`` for a message, and how many more there are."""
    names = list(names)
    shown_names = ", ".join(shown(name) for name in names[:n]) or "(none)"
    return shown_names + (f" (+{len(names) - n} more)" if len(names) > n else "")
