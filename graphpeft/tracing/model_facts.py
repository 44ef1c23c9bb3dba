"""Facts about a model read from its class, forward signature and config (no tracing): whether it is a transformers
model, which inputs its forward takes, and the geometry PEFT reads from a transformers config."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..errors import RuleError


def is_transformers_model(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "model_type")


def forward_parameters(model: nn.Module) -> list[str]:
    return list(inspect.signature(model.forward).parameters)


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def _first_attr(config: Any, names: tuple[str, ...]) -> int:
    for name in names:
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise RuleError(f"virtual tokens need one of {', '.join(names)} in {type(config).__name__}")


def model_geometry(config: Any) -> dict[str, int]:
    """``layers``, ``width``, ``heads``, ``kv_heads``, ``head_dim`` of a transformers config, read as PEFT
    reads them."""
    layers = _first_attr(config, ("num_hidden_layers", "num_layers", "n_layer"))
    width = _first_attr(config, ("hidden_size", "n_embd", "d_model"))
    heads = _first_attr(config, ("num_attention_heads", "n_head", "num_heads"))
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or width // heads
    return {"layers": layers, "width": width, "heads": heads, "kv_heads": int(kv_heads), "head_dim": int(head_dim)}


def prefix_geometry(config: Any) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of the cache a prefix fills."""
    geometry = model_geometry(config)
    return geometry["layers"], geometry["kv_heads"], geometry["head_dim"]
