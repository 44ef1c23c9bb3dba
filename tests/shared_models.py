"""Adapted tiny models built once per test session (tracing dominates these tests' time); read-only use."""

from __future__ import annotations

import functools

from models import tiny_llama

import graphpeft
from graphpeft import GraphPeftModel


@functools.lru_cache(maxsize=None)
def llama_with_lora() -> GraphPeftModel:
    """Tiny Llama with the built-in ``lora`` rule (q and v, r=8); its graphs are traced on first use."""
    return graphpeft.apply(tiny_llama(), "lora")
