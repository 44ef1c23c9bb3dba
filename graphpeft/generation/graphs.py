"""The generation graphs: a prefill graph and a decode graph with a KV cache, adapted like forward graphs.

Both graphs are exported from the base model itself (so module FQNs, and with them
the adapter sites, are the same as in the forward graphs) and rewritten with
the same pipeline (:func:`graphpeft.rewrite.pipeline.adapt_graph`), adapters and parameters:

- *prefill* runs the prompt and returns the last position's logits and the cache;
- *decode* takes one new token per row plus the cache and returns the grown cache,
  so a step costs one token of compute (the prompt is never recomputed).

The cache crosses the graph boundary as key/value tensors (:mod:`graphpeft.tracing.kv_cache`).
Decoder-only models get ``input_ids``, ``attention_mask`` and ``position_ids``
(computed from the mask as transformers does, so left padding works); encoder-decoders
run the encoder once in prefill and feed its output to every decode step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import fx
from torch.export import Dim

from ..errors import CallError
from ..rewrite.pipeline import GraphSettings, adapt_graph, prepare_export
from ..tracing.example_inputs import EXAMPLE_BATCH, EXAMPLE_DECODER_SEQ, EXAMPLE_SEQ, max_positions
from ..tracing.export import export_graph
from ..tracing.graph_utils import clone_graph
from ..tracing.kv_cache import GraphCache, GraphEncoderDecoderCache
from ..tracing.model_facts import forward_parameters
from ..tracing.signature import Signature

if TYPE_CHECKING:
    from ..runtime.model import GraphPeftModel


PHASES = ("prefill", "decode")


@dataclass
class GenerationGraphs:
    """The two graphs ``generate`` runs, rewritten with the same adapters.

    Decoder-only:
        prefill(input_ids (B, S), attention_mask (B, S)[, position_ids (B, S)], cache=GraphCache())
        decode(input_ids (B, 1), attention_mask (B, P + 1)[, position_ids (B, 1)], cache=<P cached positions>)
    Encoder-decoder:
        prefill(input_ids (B, S), attention_mask (B, S), decoder_input_ids (B, T), cache=GraphEncoderDecoderCache())
        decode(attention_mask (B, S), encoder_outputs=(hidden (B, S, d),), decoder_input_ids (B, 1), cache=...)
    Each returns the model's output: ``.logits`` (B, ·, vocab) and the grown cache under ``cache_name``
    (encoder-decoder prefill also ``.encoder_last_hidden_state``).
    """

    prefill: fx.GraphModule
    decode: fx.GraphModule
    encoder_decoder: bool
    cache_name: str
    static_inputs: dict[str, Any]
    takes_positions: bool


def generation_graphs(model: GraphPeftModel) -> GenerationGraphs:
    """The generation graphs for the model's current adapters (built once, cached in ``model._graphs``)."""
    adapters = model._graph_adapters()
    return cached_generation_graphs(model, adapters, lambda: build_generation_graphs(model, adapters))


def cached_generation_graphs(
    model: GraphPeftModel, tag: tuple, build: Callable[[], GenerationGraphs]
) -> GenerationGraphs:
    """The graphs cached in ``model._graphs`` under ``(generation signature of each phase, tag)``;
    ``build()`` makes them once."""
    device = str(next(model.base_model.parameters()).device)
    keys = [(generation_signature(phase, device), tag) for phase in PHASES]
    if not all(key in model._graphs for key in keys):
        graphs = build()
        model._graphs[keys[0]], model._graphs[keys[1]] = graphs.prefill, graphs.decode
    return _describe(model.base_model, model._graphs[keys[0]], model._graphs[keys[1]])


def generation_signature(phase: str, device: str) -> Signature:
    """The graph-cache key of a generation phase (no call of forward has it)."""
    return Signature((("graphpeft.generate", phase),), False, device)


def build_generation_graphs(model: GraphPeftModel, adapters: tuple[str, ...], mixed: bool = False) -> GenerationGraphs:
    """Copies of the base model's prefill and decode exports with ``adapters`` placed on both (stacked for
    mixed-adapter batches when ``mixed``; see :mod:`graphpeft.rewrite.pipeline`)."""
    base = model.base_model
    check_generative(base)
    layout = _describe(base, None, None)
    graphs = []
    for phase, export in zip(PHASES, base_generation_graphs(model, layout), strict=True):
        # an encoder-decoder's decode step computes neither the encoder nor the cross-attention key/value
        # projections (their results sit in the cache), so those sites are absent there
        skip = phase == "decode" and layout.encoder_decoder
        settings = GraphSettings(False, skip_missing=skip, mixed=mixed, drop_runtime_checks=True)
        graphs.append(adapt_graph(clone_graph(export), model.adapter_claims(adapters), base, model.adapters, settings))
    return _describe(base, *graphs)


def base_generation_graphs(model: GraphPeftModel, layout: GenerationGraphs) -> tuple[fx.GraphModule, fx.GraphModule]:
    """The unrewritten prefill and decode exports, exported once and kept in ``model._base_graphs``
    (every adapter set, and every mixed batch, rewrites copies of them).

    The decode graph's example cache comes from running the prefill export on synthetic inputs.
    """
    base = model.base_model
    device = str(next(base.parameters()).device)
    keys = [generation_signature(phase, device) for phase in PHASES]
    if not all(key in model._base_graphs for key in keys):
        example, shapes = _prefill_example(base, layout)
        prefill = export_graph(base, (), example, shapes, training=False)
        with torch.no_grad():
            out = prefill(**example)
        example, shapes = _decode_example(base, layout, example, out)
        decode = export_graph(base, (), example, shapes, training=False, runtime_asserts=True)
        for graph in (prefill, decode):
            prepare_export(graph, drop_dtype_checks=False)
        model._base_graphs[keys[0]], model._base_graphs[keys[1]] = prefill, decode
    return model._base_graphs[keys[0]], model._base_graphs[keys[1]]


def check_generative(base: Any) -> None:
    can_generate = getattr(base, "can_generate", None)
    if not hasattr(getattr(base, "config", None), "model_type") or not callable(can_generate) or not can_generate():
        raise CallError(
            f"{type(base).__name__} cannot generate text: generate() needs a transformers model with a "
            "language-modeling head (a ...ForCausalLM or ...ForConditionalGeneration class)"
        )
    params = forward_parameters(base)
    if "cache" not in params and "past_key_values" not in params:
        raise CallError(f"{type(base).__name__}.forward takes no KV cache, so graphpeft cannot generate with it")
    text = base.config.get_text_config(decoder=True)
    if getattr(text, "sliding_window", None) or "sliding_attention" in (getattr(text, "layer_types", None) or ()):
        raise CallError(
            f"{type(base).__name__} uses sliding-window attention, whose cache graphpeft's generate() does not "
            "model yet; merge the adapter (merge_and_unload()) and use transformers' generate"
        )


def _describe(base: Any, prefill: Any, decode: Any) -> GenerationGraphs:
    params = forward_parameters(base)
    encoder_decoder = bool(getattr(base.config, "is_encoder_decoder", False))
    static: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in params:
        static["logits_to_keep"] = 1
    cache_name = "cache" if "cache" in params else "past_key_values"
    takes_positions = "position_ids" in params and not encoder_decoder
    return GenerationGraphs(prefill, decode, encoder_decoder, cache_name, static, takes_positions)


def _dims(base: Any) -> dict[str, Any]:
    max_len = max_positions(base.config)
    return {
        "batch": Dim("batch", min=1),
        "seq": Dim("seq", min=1, max=max_len) if max_len else Dim("seq", min=1),
        "decoder_seq": Dim("decoder_seq", min=1, max=max_len) if max_len else Dim("decoder_seq", min=1),
        "past": Dim("past", min=1, max=max_len - 1) if max_len else Dim("past", min=1),
    }


def _prefill_example(base: Any, graphs: GenerationGraphs) -> tuple[dict[str, Any], dict[str, Any]]:
    device = next(base.parameters()).device
    dims = _dims(base)
    ids = torch.randint(0, base.config.vocab_size, (EXAMPLE_BATCH, EXAMPLE_SEQ), device=device)
    seq = {0: dims["batch"], 1: dims["seq"]}
    example: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    shapes: dict[str, Any] = {"input_ids": seq, "attention_mask": seq}
    if graphs.encoder_decoder:
        example["decoder_input_ids"] = torch.zeros(EXAMPLE_BATCH, EXAMPLE_DECODER_SEQ, dtype=torch.long, device=device)
        shapes["decoder_input_ids"] = {0: dims["batch"], 1: dims["decoder_seq"]}
        example[graphs.cache_name] = GraphEncoderDecoderCache()
    else:
        example[graphs.cache_name] = GraphCache()
    shapes[graphs.cache_name] = []
    if graphs.takes_positions:
        example["position_ids"] = torch.arange(EXAMPLE_SEQ, device=device).expand(EXAMPLE_BATCH, -1).contiguous()
        shapes["position_ids"] = seq
    return _with_static(example, shapes, graphs)


def _decode_example(
    base: Any, graphs: GenerationGraphs, prefill_example: dict[str, Any], prefill_out: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    dims = _dims(base)
    batch = {0: dims["batch"]}
    cache = prefill_out[graphs.cache_name]
    tokens = prefill_example["input_ids"][:, :1].clone()
    if graphs.encoder_decoder:
        own, cross = cache.tensors()
        encoder_seq = {0: dims["batch"], 1: dims["seq"]}
        example = {
            "attention_mask": prefill_example["attention_mask"],
            "encoder_outputs": (prefill_out.encoder_last_hidden_state,),
            "decoder_input_ids": tokens,
            graphs.cache_name: cache,
        }
        shapes = {
            "attention_mask": encoder_seq,
            "encoder_outputs": (encoder_seq,),
            "decoder_input_ids": batch,
            graphs.cache_name: [{0: dims["batch"], 2: dims["past"]}] * len(own)
            + [{0: dims["batch"], 2: dims["seq"]}] * len(cross),
        }
        return _with_static(example, shapes, graphs)
    past = cache.get_seq_length()
    example = {
        "input_ids": tokens,
        "attention_mask": torch.ones(EXAMPLE_BATCH, past + 1, dtype=torch.long, device=tokens.device),
        graphs.cache_name: cache,
    }
    shapes = {
        "input_ids": batch,
        "attention_mask": {0: dims["batch"], 1: dims["past"] + 1},
        graphs.cache_name: [{0: dims["batch"], 2: dims["past"]}] * len(cache.tensors()),
    }
    if graphs.takes_positions:
        example["position_ids"] = torch.full_like(tokens, past)
        shapes["position_ids"] = batch
    return _with_static(example, shapes, graphs)


def _with_static(example: dict[str, Any], shapes: dict[str, Any], graphs: GenerationGraphs) -> tuple[dict, dict]:
    example.update(graphs.static_inputs)
    shapes.update(dict.fromkeys(graphs.static_inputs))
    return example, shapes
