"""KV caches as forward-graph inputs (prefix tuning), for signatures and synthetic example inputs.

A call that passes a cache (:class:`graphpeft.tracing.kv_cache.GraphCache`, or its
encoder-decoder form) is keyed by the cache's structure, not by its identity:
:class:`CacheSpec` holds the layer count, dtype and per-layer (kv_heads, length,
head_dim). ``example`` builds a synthetic cache of that structure with a dynamic
batch dim and a dynamic length dim (a static length makes torch.export emit
guards it cannot prove on some models), so one graph serves every batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.export import Dim

from .kv_cache import GraphCache, GraphEncoderDecoderCache

KEY_LENGTH = "M"  # role of an attention mask that covers cached + new positions


@dataclass(frozen=True)
class CacheSpec:
    """Structure of a cache input: ``leaves`` tensors (k0, v0, k1, v1, ...), each (B, kv_heads, length, head_dim)."""

    encoder_decoder: bool
    leaves: int
    dtype: torch.dtype
    kv_heads: int
    length: int
    head_dim: int

    @classmethod
    def of(cls, cache: Any) -> CacheSpec | None:
        """The spec of ``cache``, or None if it is not a graphpeft cache."""
        if isinstance(cache, GraphEncoderDecoderCache):
            tensors, encoder_decoder = cache.tensors()[0], True
        elif isinstance(cache, GraphCache):
            tensors, encoder_decoder = cache.tensors(), False
        else:
            return None
        if not tensors:
            return cls(encoder_decoder, 0, torch.float32, 0, 0, 0)
        _, heads, length, head_dim = tensors[0].shape
        return cls(encoder_decoder, len(tensors), tensors[0].dtype, heads, length, head_dim)

    def example(self, batch: int, batch_dim: Any, max_length: int | None, device: str) -> tuple[Any, Any]:
        """A synthetic cache of this structure and its ``dynamic_shapes`` entry."""
        shape = (batch, self.kv_heads, self.length, self.head_dim)
        tensors = [torch.randn(shape, dtype=self.dtype, device=device) for _ in range(self.leaves)]
        past = Dim("past", min=1, max=max_length - 1) if max_length else Dim("past", min=1)
        dims = [{0: batch_dim, 2: past}] * self.leaves
        if self.encoder_decoder:
            return GraphEncoderDecoderCache(GraphCache.from_tensors(tensors)), dims
        return GraphCache.from_tensors(tensors), dims


def mask_name(spec: CacheSpec) -> str:
    """The mask that covers cached + new positions: the decoder's for encoder-decoders."""
    return "decoder_attention_mask" if spec.encoder_decoder else "attention_mask"
