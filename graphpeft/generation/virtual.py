"""generate() with a virtual-token adapter: the tokens enter once, at prefill, never at decode steps.

The prefill runs the adapter's forward graph (:mod:`graphpeft.rewrite.virtual_inputs` expands the inputs)
with a cache input: the prefix cache (prefix tuning) or an empty one (prompt/P-tuning), and keeps
the cache it returns: nv virtual + S prompt positions. Decode steps then run the ordinary decode
graph on that cache with one new token each, so the virtual tokens are never re-injected.
Positions follow PEFT's forward, which passes no position ids: virtual tokens take positions
0..nv-1 and real tokens count on from nv (padding included), one more per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import AdapterError
from ..rewrite.virtual_inputs import expand, virtual_claim
from ..tracing.kv_cache import GraphCache, GraphEncoderDecoderCache
from .graphs import GenerationGraphs
from .steps import CausalSteps, Seq2SeqSteps

if TYPE_CHECKING:
    from ..runtime.model import GraphPeftModel


def virtual_steps(
    model: GraphPeftModel, graphs: GenerationGraphs, extra: dict[str, Any]
) -> CausalSteps | Seq2SeqSteps | None:
    """Step runners that prefill through the virtual-token forward graph, or None without such an adapter."""
    if virtual_claim(model, model._graph_adapters()) is None:
        return None
    if extra:
        raise AdapterError(
            "generate(adapter_names=...) does not take virtual-token adapters; generate per adapter instead"
        )
    if graphs.encoder_decoder:
        return _VirtualSeq2SeqSteps(graphs, model)
    return _VirtualCausalSteps(graphs, model)


def _prefill(model: GraphPeftModel, kwargs: dict[str, Any], cache_name: str, empty: Any) -> tuple[dict[str, Any], Any]:
    """(expanded kwargs, output) of the eval-mode forward graph on the expanded prompt, with a cache."""
    kwargs = expand(model, {**kwargs, "use_cache": True}, model._graph_adapters())
    kwargs.setdefault(cache_name, empty)
    graph = model._graph(kwargs)
    return kwargs, graph(**kwargs)


def _cache_of(out: Any) -> Any:
    """The grown cache in a forward output (its key is ``cache`` or ``past_key_values``, by model)."""
    return next(v for v in out.values() if isinstance(v, (GraphCache, GraphEncoderDecoderCache)))


class _VirtualCausalSteps(CausalSteps):
    def __init__(self, graphs: GenerationGraphs, model: GraphPeftModel):
        super().__init__(graphs, {})
        self.model = model

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new: int) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        kwargs, out = _prefill(self.model, inputs, self.graphs.cache_name, GraphCache())
        mask = kwargs["attention_mask"]
        batch, self.length = mask.shape
        self.mask = torch.cat([mask, mask.new_ones(batch, max_new)], dim=1)
        self.position = torch.full((batch, 1), self.length - 1, dtype=torch.long, device=mask.device)
        self.cache = _cache_of(out).tensors()
        return out["logits"][:, -1, :].float()


class _VirtualSeq2SeqSteps(Seq2SeqSteps):
    def __init__(self, graphs: GenerationGraphs, model: GraphPeftModel):
        super().__init__(graphs, model.base_model, {})
        self.model = model

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new: int) -> torch.Tensor:
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": self.first_tokens(input_ids),
        }
        kwargs, out = _prefill(self.model, inputs, self.graphs.cache_name, GraphEncoderDecoderCache())
        self.mask = kwargs["attention_mask"]
        self.encoder_outputs = [out["encoder_last_hidden_state"]]
        own, cross = _cache_of(out).tensors()
        self.cache = own + cross
        return out["logits"][:, -1, :].float()
