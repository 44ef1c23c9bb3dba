"""Which :class:`~graphpeft.runtime.model.GraphPeftModel` holds a base model.

A wrapper freezes its base, merges into its weights and caches graphs that read them, so two live
wrappers on one base would change each other's results (``g1.merge()`` moves ``g2``'s logits). A base is
therefore held by one wrapper at a time: from its first adapter until ``unload()`` /
``merge_and_unload()`` hands the base back, or until the wrapper is garbage.

The record is a weak map (base -> weak reference to its wrapper): it keeps neither alive and writes
nothing onto the user's model.
"""

from __future__ import annotations

import gc
import weakref
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import AdapterError

if TYPE_CHECKING:
    from .model import GraphPeftModel

_HOLDERS: weakref.WeakKeyDictionary[nn.Module, weakref.ReferenceType[Any]] = weakref.WeakKeyDictionary()


def holder_of(base: nn.Module) -> GraphPeftModel | None:
    """The live wrapper that holds ``base``, or None.

    A dropped wrapper can linger in a reference cycle until the cycle collector runs; before
    reporting a holder, the collector runs once, so only a wrapper someone still uses counts.
    """
    ref = _HOLDERS.get(base)
    if ref is None or ref() is None:
        return None
    gc.collect()
    return ref()


def hold(base: nn.Module, wrapper: nn.Module) -> None:
    """Record that ``wrapper`` holds ``base``; refuse if another live wrapper does."""
    ref = _HOLDERS.get(base)
    if ref is not None and ref() is wrapper:
        return
    if holder_of(base) is not None:
        raise AdapterError(held_message(base, "a second GraphPeftModel", "add_adapter"))
    _HOLDERS[base] = weakref.ref(wrapper)


def release(base: nn.Module, wrapper: nn.Module) -> None:
    """Forget that ``wrapper`` holds ``base`` (no-op if it does not)."""
    ref = _HOLDERS.get(base)
    if ref is not None and ref() is wrapper:
        del _HOLDERS[base]


def held_message(base: nn.Module, what: str, add: str) -> str:
    return (
        f"this {type(base).__name__} is already wrapped by a live GraphPeftModel, and {what} on it would share "
        f"its weights (merging in one would change the other); use {add}() on that GraphPeftModel, "
        "or call its unload() first"
    )
