"""KV caches that cross the boundary of an exported graph as plain tensors.

Generation graphs take the cache as an input and return the grown cache as an
output. torch.export flattens inputs and outputs with pytree, so the two cache
classes here are registered as pytree nodes whose leaves are the per-layer
key/value tensors, each (batch, kv_heads, length, head_dim):

- :class:`GraphCache` (a ``DynamicCache``): leaves ``[k0, v0, k1, v1, ...]``;
  the tree context is the number of layers (0 for the empty cache of a prefill).
- :class:`GraphEncoderDecoderCache` (an ``EncoderDecoderCache``): the
  self-attention leaves, then the cross-attention leaves; cross-attention
  layers that hold tensors count as computed (``is_updated``), so a decode
  graph reuses them instead of projecting the encoder output again.

Only these graphpeft-owned classes are registered, so transformers' own cache
classes keep their behaviour everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils import _pytree as pytree
from transformers.cache_utils import CacheLayerMixin, DynamicCache, DynamicLayer, EncoderDecoderCache


class GraphCache(DynamicCache):
    """A ``DynamicCache`` that torch.export flattens to its key/value tensors."""

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor]) -> GraphCache:
        """``[k0, v0, k1, v1, ...]`` -> cache (the tensors are used as they are, not copied)."""
        cache = cls()
        for index in range(0, len(tensors), 2):
            layer = DynamicLayer()
            layer.keys, layer.values = tensors[index], tensors[index + 1]
            layer.device = layer.keys.device
            layer.is_initialized = True
            cache.layers.append(layer)
        return cache

    def tensors(self) -> list[torch.Tensor]:
        out = []
        for layer in self.layers:
            if not isinstance(layer, CacheLayerMixin) or not layer.is_initialized:
                continue
            if layer.keys is not None and layer.values is not None:
                out += [layer.keys, layer.values]
        return out


class GraphEncoderDecoderCache(EncoderDecoderCache):
    """Self- and cross-attention :class:`GraphCache` s that torch.export flattens to tensors."""

    self_attention_cache: GraphCache
    cross_attention_cache: GraphCache

    def __init__(self, self_attention: GraphCache | None = None, cross_attention: GraphCache | None = None):
        super().__init__(self_attention or GraphCache(), cross_attention or GraphCache())

    def tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.self_attention_cache.tensors(), self.cross_attention_cache.tensors()


def _flatten_cache(cache: GraphCache) -> tuple[list[torch.Tensor], int]:
    tensors = cache.tensors()
    return tensors, len(tensors)


def _unflatten_cache(tensors: Iterable[torch.Tensor], count: int) -> GraphCache:
    return GraphCache.from_tensors(list(tensors))


def _flatten_encoder_decoder(cache: GraphEncoderDecoderCache) -> tuple[list[torch.Tensor], tuple[int, int]]:
    own, cross = cache.tensors()
    return own + cross, (len(own), len(cross))


def _unflatten_encoder_decoder(tensors: Iterable[torch.Tensor], counts: tuple[int, int]) -> GraphEncoderDecoderCache:
    leaves = list(tensors)
    own = GraphCache.from_tensors(leaves[: counts[0]])
    cross = GraphCache.from_tensors(leaves[counts[0] :])
    return GraphEncoderDecoderCache(own, cross)


def _with_keys(flatten: Any) -> Any:
    def flatten_with_keys(cache: Any) -> tuple[list[tuple[Any, torch.Tensor]], Any]:
        tensors, context = flatten(cache)
        return [(pytree.SequenceKey(i), t) for i, t in enumerate(tensors)], context

    return flatten_with_keys


def _register() -> None:
    for cls, flatten, unflatten in (
        (GraphCache, _flatten_cache, _unflatten_cache),
        (GraphEncoderDecoderCache, _flatten_encoder_decoder, _unflatten_encoder_decoder),
    ):
        if cls in pytree.SUPPORTED_NODES:
            continue
        pytree.register_pytree_node(
            cls,
            flatten,
            unflatten,
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
            flatten_with_keys_fn=_with_keys(flatten),
        )


_register()
