"""Tiny models shared across tests, so that each call signature is exported once (tracing dominates
these tests' time).

``llama_with_lora()`` is read-only. ``bare_model(kind)`` has no adapter of its own: a test adds the
adapter it is about inside ``temporary_adapters(...)``, which removes it again, pass or fail. The
pristine exports (one per call signature) outlive the adapter; every adapter's rewritten graphs do not.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import graphpeft
from graphpeft import GraphPeftModel
from models import BUILDERS, tiny_llama


@functools.cache
def llama_with_lora() -> GraphPeftModel:
    """Tiny Llama with the built-in ``lora`` rule (q and v, r=8); its graphs are traced on first use."""
    return graphpeft.apply(tiny_llama(), "lora")


@functools.cache
def bare_model(kind: str) -> GraphPeftModel:
    """``BUILDERS[kind]()`` (seeded, so its weights equal every other build) wrapped without adapters, in eval mode."""
    return GraphPeftModel(BUILDERS[kind]()).eval()


@contextlib.contextmanager
def temporary_adapters(model: GraphPeftModel, *names: str) -> Iterator[GraphPeftModel]:
    """``model`` for a block that adds adapters ``names`` (default: ``"default"``); afterwards they are gone."""
    try:
        yield model
    finally:
        model.unmerge()
        for name in names or ("default",):
            model.delete_adapter_state(name)
        model.eval()
