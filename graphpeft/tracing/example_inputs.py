"""Synthetic example inputs for a transformers model and a call signature, with the dynamic dims to export them with.

The example sizes are small (batch 2, sequence 8, decoder sequence 5); a model's learned position limit bounds the
sequence dims, so the exported graph refuses (and graphpeft re-exports for) calls longer than the model allows."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.export import Dim

from .cache_spec import KEY_LENGTH, CacheSpec
from .signature import Signature

EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_DECODER_SEQ = 2, 8, 5


def max_positions(config: Any) -> int | None:
    """The model's learned position limit (``max_position_embeddings`` and its aliases), when it exceeds the
    example sequence; None otherwise (no limit to bound the sequence dims with)."""
    for attr in ("max_position_embeddings", "n_positions", "max_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > EXAMPLE_SEQ:
            return value
    return None


def example_inputs(model: nn.Module, signature: Signature) -> tuple[dict[str, Any], dict[str, Any]]:
    """Synthetic kwargs and ``dynamic_shapes`` for a transformers model and a signature."""
    config = model.config
    device = signature.device
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    max_len = max_positions(config)
    dims = {
        "B": Dim("batch", min=1),
        "S": Dim("seq", min=1, max=max_len) if max_len else Dim("seq", min=1),
        "T": Dim("decoder_seq", min=1, max=max_len) if max_len else Dim("decoder_seq", min=1),
        KEY_LENGTH: Dim("key_seq", min=1),
    }
    sizes = {"B": EXAMPLE_BATCH, "S": EXAMPLE_SEQ, "T": EXAMPLE_DECODER_SEQ}
    kwargs: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for entry in signature.inputs:
        if len(entry) == 2 and isinstance(entry[1], CacheSpec):
            query = EXAMPLE_DECODER_SEQ if entry[1].encoder_decoder else EXAMPLE_SEQ
            sizes[KEY_LENGTH] = query + entry[1].length
    for entry in signature.inputs:
        if len(entry) == 2 and isinstance(entry[1], CacheSpec):
            kwargs[entry[0]], shapes[entry[0]] = entry[1].example(EXAMPLE_BATCH, dims["B"], max_len, device)
            continue
        if len(entry) == 2:
            kwargs[entry[0]] = entry[1]
            shapes[entry[0]] = None
            continue
        name, dtype, roles = entry
        shape = tuple(sizes.get(r, r) for r in roles)
        kwargs[name] = _fill(name, dtype, shape, vocab, config, device)
        shapes[name] = {i: dims[r] for i, r in enumerate(roles) if r in dims} or None
    return kwargs, shapes


def _fill(name: str, dtype: torch.dtype, shape: tuple[int, ...], vocab: int, config: Any, device: str) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype, device=device)
    if dtype == torch.bool or "attention_mask" in name:
        return torch.ones(shape, dtype=dtype, device=device)
    if name == "token_type_ids":
        return torch.zeros(shape, dtype=dtype, device=device)
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], device=device).expand(shape).to(dtype).contiguous()
    high = vocab
    if name == "labels" and len(shape) == 1:
        high = max(int(getattr(config, "num_labels", 2) or 2), 1)
    return torch.randint(0, high, shape, dtype=dtype, device=device)
