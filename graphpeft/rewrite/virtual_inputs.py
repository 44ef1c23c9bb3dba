"""The input boundary of virtual tokens: turn a call's kwargs into the kwargs the graph runs on.

With PEFT's semantics (PEFT 0.21.2, ``PeftModelFor*.forward``):

- prompt tuning / P-tuning: ``inputs_embeds = cat(prompts (B, nv, d), embed(input_ids) (B, S, d))``; the
  encoder's ``attention_mask`` gains nv leading ones; a causal LM's ``labels`` gain nv leading -100
  (its logits then cover the virtual positions too: (B, nv + S, vocab)); ``position_ids`` are dropped,
  so the model numbers the virtual tokens from 0; ``token_type_ids`` gain nv zeros for sequence
  classification and are dropped otherwise.
- prefix tuning: the prefix goes in as a KV cache holding nv positions per layer (decoder-only: every
  layer; encoder-decoders: the decoder's self-attention); the mask over cached + new positions gains
  nv leading ones and given ``position_ids`` are shifted by nv, so real tokens sit at positions nv...

The graph is traced for the expanded kwargs (``inputs_embeds`` or a cache input), so the model's
own code computes positions and masks for the longer sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import AdapterError
from ..rules.registry import get_method
from ..tracing.kv_cache import GraphCache, GraphEncoderDecoderCache
from ..tracing.model_facts import forward_parameters, is_encoder_decoder, prefix_geometry
from .methods.virtual_tokens import encoder_of
from .sites import Site

if TYPE_CHECKING:
    from ..runtime.model import GraphPeftModel
    from .claims import Claim

IGNORE_INDEX = -100


def virtual_claim(model: GraphPeftModel, adapters: tuple[str, ...]) -> tuple[str, Site, Claim] | None:
    """``(adapter, site, claim)`` of the one active virtual-token adapter, or None."""
    found = []
    for name in adapters:
        for site, claim in model.adapter_specs[name].claims.values():
            if get_method(claim.method).virtual_tokens:
                found.append((name, site, claim))
                break
    if len(found) > 1:
        raise AdapterError(
            f"adapters {', '.join(a for a, _, _ in found)} all add virtual tokens; activate only one of them at a time"
        )
    return found[0] if found else None


def expand(model: GraphPeftModel, kwargs: dict[str, Any], adapters: tuple[str, ...]) -> dict[str, Any]:
    """The kwargs the graph runs on when a virtual-token adapter is active (``kwargs`` otherwise)."""
    found = virtual_claim(model, adapters)
    if found is None:
        return kwargs
    name, site, claim = found
    table = encoder_of(model.adapters, name).output()
    nv = claim.options["num_virtual_tokens"]
    if claim.method == "prefix_tuning":
        return with_prefix(model.base_model, dict(kwargs), table, nv)
    return with_prompt(model.base_model, dict(kwargs), table, nv, model.base_model.get_submodule(site.fqn))


def _batch_size(kwargs: dict[str, Any]) -> int:
    for key in ("input_ids", "inputs_embeds"):
        if kwargs.get(key) is not None:
            return kwargs[key].shape[0]
    raise AdapterError("virtual tokens need input_ids or inputs_embeds in the call")


def _prepend(tensor: torch.Tensor, nv: int, value: int) -> torch.Tensor:
    """``tensor`` (B, S, ...) with nv leading entries equal to ``value`` on dim 1."""
    lead = torch.full((tensor.shape[0], nv, *tensor.shape[2:]), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat((lead, tensor), dim=1)


def with_prompt(base: Any, kwargs: dict[str, Any], table: torch.Tensor, nv: int, embedding: Any) -> dict[str, Any]:
    """Prompt/P-tuning kwargs: ``table`` (rows, d) rows [0, nv) prepended to the input embeddings."""
    ids = kwargs.pop("input_ids", None)
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        embeds = embedding(ids)
    batch = embeds.shape[0]
    prompts = table[:nv].unsqueeze(0).expand(batch, -1, -1).to(embeds.dtype)
    kwargs["inputs_embeds"] = torch.cat((prompts, embeds), dim=1)
    if kwargs.get("attention_mask") is not None:
        kwargs["attention_mask"] = _prepend(kwargs["attention_mask"], nv, 1)
    labels = kwargs.get("labels")
    if labels is not None and labels.dim() == 2 and not is_encoder_decoder(base):
        kwargs["labels"] = _prepend(labels, nv, IGNORE_INDEX)
    kwargs.pop("position_ids", None)
    if "token_type_ids" in kwargs:
        if type(base).__name__.endswith("ForSequenceClassification"):
            kwargs["token_type_ids"] = _prepend(kwargs["token_type_ids"], nv, 0)
        else:
            del kwargs["token_type_ids"]
    return kwargs


def prefix_cache(base: Any, table: torch.Tensor, nv: int, batch: int) -> GraphCache | GraphEncoderDecoderCache:
    """The prefix as a cache: layer l's keys are ``table``'s block 2l, values block 2l+1, each
    (B, kv_heads, nv, head_dim)."""
    layers, kv_heads, head_dim = prefix_geometry(base.config)
    dtype = next(base.parameters()).dtype
    blocks = table.to(dtype).view(nv, 2 * layers, kv_heads, head_dim).permute(1, 2, 0, 3).unbind(0)
    if is_encoder_decoder(base):
        # PEFT doubles the block list for (self, cross) pairs and splits it in fours, so the decoder's
        # layer l reads blocks 4l and 4l+1 of [b0..b(2L-1), b0..b(2L-1)]; the same numbers need the same blocks.
        order = [(4 * layer + kv) % (2 * layers) for layer in range(layers) for kv in (0, 1)]
        blocks = tuple(blocks[i] for i in order)
    tensors = [block.unsqueeze(0).expand(batch, -1, -1, -1).contiguous() for block in blocks]
    if is_encoder_decoder(base):
        return GraphEncoderDecoderCache(GraphCache.from_tensors(tensors))
    return GraphCache.from_tensors(tensors)


def with_prefix(base: Any, kwargs: dict[str, Any], table: torch.Tensor, nv: int) -> dict[str, Any]:
    """Prefix-tuning kwargs: the prefix cache, the key-length mask extended, positions shifted by nv."""
    cache = prefix_cache(base, table, nv, _batch_size(kwargs))
    kwargs["cache" if "cache" in forward_parameters(base) else "past_key_values"] = cache
    mask = "decoder_attention_mask" if is_encoder_decoder(base) else "attention_mask"
    if kwargs.get(mask) is not None:
        kwargs[mask] = _prepend(kwargs[mask], nv, 1)
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"] + nv
    return kwargs
