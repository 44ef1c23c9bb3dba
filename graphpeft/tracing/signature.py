"""Signatures: what makes two calls need different graphs, and whether a call fits the graph exported for one.

A call's signature names each tensor input's dims by role (``B`` batch, ``S`` sequence, ``T`` decoder sequence,
``M`` key length over cached + new positions) rather than by size, so one graph exported with dynamic dims
serves every batch size and length inside the ranges it was exported with (kept in ``graph.meta``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .cache_spec import KEY_LENGTH, CacheSpec, mask_name
from .model_facts import is_encoder_decoder

DIM_RANGES = "graphpeft.dim_ranges"  # GraphModule.meta: dim name -> (min, max) the graph was exported with
_SEQUENCE_INPUTS = {"input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds"}


@dataclass(frozen=True)
class Signature:
    """What makes two calls need different graphs.

    ``inputs`` holds, per kwarg, ``(name, dtype, roles)`` for tensors, where ``roles``
    names each dim (``B`` batch, ``S`` sequence, ``T`` decoder sequence, or a fixed
    size), or ``(name, value)`` for constants (``return_dict=False``).
    """

    inputs: tuple[tuple[Any, ...], ...]
    training: bool
    device: str

    def names(self) -> list[str]:
        return [entry[0] for entry in self.inputs]


def _roles(name: str, tensor: torch.Tensor, encoder_decoder: bool) -> tuple[Any, ...]:
    shape = tuple(tensor.shape)
    if not shape:
        return ()
    if name.startswith("decoder_") or (name == "labels" and encoder_decoder and tensor.dim() == 2):
        return ("B", "T", *shape[2:])
    if name in _SEQUENCE_INPUTS or (name == "labels" and tensor.dim() >= 2):
        return ("B", "S", *shape[2:]) if len(shape) >= 2 else ("B",)
    return ("B", *shape[1:])


def signature_of(model: nn.Module, kwargs: Mapping[str, Any], training: bool, static: bool) -> Signature:
    """The graph key of a call. ``static`` keys on exact shapes (custom modules, out-of-range calls)."""
    encoder_decoder = is_encoder_decoder(model)
    entries: list[tuple[Any, ...]] = []
    device = "cpu"
    for name in sorted(kwargs):
        value = kwargs[name]
        if isinstance(value, torch.Tensor):
            roles = tuple(value.shape) if static else _roles(name, value, encoder_decoder)
            entries.append((name, value.dtype, roles))
            device = str(value.device)
        elif CacheSpec.of(value) is not None:
            entries.append((name, CacheSpec.of(value)))
        else:
            entries.append((name, _freeze(value)))
    entries = _key_length_masks(entries)
    params = next(model.parameters(), None)
    if params is not None:
        device = str(params.device)
    return Signature(tuple(entries), training, device)


def _key_length_masks(entries: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """With a cache input, the mask spans cached + new positions: its length gets its own role."""
    spec = next((e[1] for e in entries if len(e) == 2 and isinstance(e[1], CacheSpec)), None)
    if spec is None:
        return entries
    return [
        (e[0], e[1], (e[2][0], KEY_LENGTH, *e[2][2:])) if len(e) == 3 and e[0] == mask_name(spec) else e
        for e in entries
    ]


def _freeze(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def dim_ranges(dynamic_shapes: Any) -> dict[str, tuple[int, int]]:
    """Dim name -> (min, max) of the dims a graph was exported with."""
    ranges = {}
    if isinstance(dynamic_shapes, dict):
        for spec in dynamic_shapes.values():
            if isinstance(spec, dict):
                for dim in spec.values():
                    name = getattr(dim, "__name__", None)
                    if name:
                        ranges[name] = (int(getattr(dim, "min", 0)), int(min(getattr(dim, "max", 2**62), 2**62)))
    return ranges


_ROLE_DIM = {"B": "batch", "S": "seq", "T": "decoder_seq", KEY_LENGTH: "key_seq"}


def fits(graph: fx.GraphModule, signature: Signature, kwargs: Mapping[str, Any]) -> bool:
    """Whether the call's sizes lie inside the dim ranges ``graph`` was exported with."""
    ranges = graph.meta.get(DIM_RANGES, {})
    for entry in signature.inputs:
        if len(entry) != 3:
            continue
        name, _, roles = entry
        for axis, role in enumerate(roles):
            bounds = ranges.get(_ROLE_DIM.get(role, ""))
            if bounds and not bounds[0] <= kwargs[name].shape[axis] <= bounds[1]:
                return False
    return True
