"""The method registry: method name -> :class:`~graphpeft.rewrite.methods.base.Method`.

Every built-in method registers itself when :mod:`graphpeft.rewrite.methods` is imported (the package root
imports it); ``graphpeft.register_method(MyMethod())`` adds one more, as PEFT's ``register_peft_method`` does.
Rules look methods up here to check their options, so the rules need not import the rewrite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import RuleError, did_you_mean

if TYPE_CHECKING:
    from ..rewrite.methods.base import Method

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` available to rules under ``method.name`` (replacing a method of that name)."""
    _REGISTRY[method.name] = method
    return method


def get_method(name: Any, where: str = "") -> Method:
    """The method registered as ``name``; a RuleError naming the registered ones otherwise (``where``: the rule)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        prefix = f"{where}: " if where else ""
        shown = name if isinstance(name, str) else repr(name)
        raise RuleError(
            f"{prefix}unknown method {shown!r}{did_you_mean(str(name), _REGISTRY)}; "
            f"available methods are {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]
