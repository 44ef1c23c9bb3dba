"""The inputs of a :class:`~graphpeft.runtime.GraphPeftModel` call: positional and keyword arguments bound to the
base model's forward parameters and checked, the canonical call used to find sites, and ``example_inputs``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import CallError, did_you_mean
from .trace import is_transformers_model


def bind_inputs(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``args`` and ``kwargs`` of a call on the GraphPeftModel ``model`` as one checked kwargs dict
    (``None`` values dropped, ``use_cache=False`` for transformers models that take it)."""
    names = [p for p in model._params if p not in ("self", "args", "kwargs")]
    if len(args) > len(names):
        raise CallError(f"{type(model.base_model).__name__} takes at most {len(names)} positional inputs, got {len(args)}")
    for name, value in zip(names, args):
        if name in kwargs:
            raise CallError(f"input {name!r} given both positionally and by keyword")
        kwargs[name] = value
    allowed = set(names) | extra_kwargs(model.base_model)
    for name in kwargs:
        if name not in allowed:
            raise CallError(
                f"{type(model.base_model).__name__} takes no input {name!r}{did_you_mean(name, allowed)}; "
                f"it takes {', '.join(sorted(allowed))}"
            )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if model._transformers and "use_cache" in names:
        if kwargs.get("use_cache"):
            raise CallError("use_cache=True is not supported in forward(); graphpeft's generate() manages the KV cache")
        kwargs["use_cache"] = False
    for name in ("cache", "past_key_values", "encoder_outputs"):
        if name in kwargs:
            raise CallError(f"input {name!r} is not supported by GraphPeftModel.forward(); use generate() for cached decoding")
    return kwargs


def canonical_kwargs(model: Any) -> dict[str, Any]:
    """The call whose graph defines the sites: ``example_inputs`` for plain modules; for transformers models
    ``input_ids`` + ``attention_mask`` (2, 8) (and ``decoder_input_ids`` (2, 5) for encoder-decoders)."""
    if not model._transformers:
        return dict(model._example)
    device = next(model.base_model.parameters()).device
    ids = torch.zeros(2, 8, dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.base_model.config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = torch.zeros(2, 5, dtype=torch.long, device=device)
    return model._bind((), kwargs)


def extra_kwargs(model: nn.Module) -> set[str]:
    """Keyword inputs a transformers model takes through ``**kwargs``."""
    if not is_transformers_model(model):
        return set()
    extra = {"return_dict", "output_attentions", "output_hidden_states"}
    try:
        from transformers.utils.generic import TransformersKwargs

        extra |= set(TransformersKwargs.__annotations__)
    except ImportError:
        pass
    return extra


def as_kwargs(model: nn.Module, params: list[str], example: Any) -> dict[str, Any] | None:
    """``example_inputs`` (a tensor, a tuple in forward's order, or a dict) as kwargs; None stays None."""
    if example is None:
        return None
    if isinstance(example, dict):
        return dict(example)
    if isinstance(example, torch.Tensor):
        example = (example,)
    names = [p for p in params if p not in ("self", "args", "kwargs")]
    if len(example) > len(names):
        raise CallError(f"example_inputs has {len(example)} entries but {type(model).__name__}.forward takes {len(names)}")
    return dict(zip(names, example))
