"""The decoding loop and the step runners it drives: prefill the prompt once, then one token per step through the
decode graph with the KV cache (decoder-only and encoder-decoder models)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CallError
from .flat_graph import FlatGraph, flat_graph
from .graphs import GenerationGraphs
from .sampling import GenerationSettings, choose_tokens


class CausalSteps:
    """Runs a decoder-only model's graphs; keeps the cache, mask and positions between steps.

    ``extra`` holds inputs fed unchanged to every graph call (a mixed batch's adapter rows)."""

    def __init__(self, graphs: GenerationGraphs, extra: dict[str, torch.Tensor]):
        self.graphs, self.extra = graphs, extra
        self.prefill_graph, self.decode_graph = flat_graph(graphs.prefill), flat_graph(graphs.decode)

    def first_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new: int) -> torch.Tensor:
        batch, length = input_ids.shape
        self.mask = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new)], dim=1)
        self.length = length
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, self.graphs.cache_name: []}
        if self.graphs.takes_positions:
            positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
            inputs["position_ids"] = positions
            self.position = positions[:, -1:]
        return self._run(self.prefill_graph, inputs)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.length += 1
        inputs = {
            "input_ids": tokens,
            "attention_mask": self.mask[:, : self.length],
            self.graphs.cache_name: self.cache,
        }
        if self.graphs.takes_positions:
            self.position = self.position + 1
            inputs["position_ids"] = self.position
        return self._run(self.decode_graph, inputs)

    def _run(self, graph: FlatGraph, inputs: dict[str, Any]) -> torch.Tensor:
        out = graph(**inputs, **self.extra, **self.graphs.static_inputs)
        self.cache = out[self.graphs.cache_name]
        return out["logits"][0][:, -1, :].float()


class Seq2SeqSteps:
    """Runs an encoder-decoder's graphs: the encoder once in prefill, then one decoder token per step."""

    def __init__(self, graphs: GenerationGraphs, base: Any, extra: dict[str, torch.Tensor]):
        self.graphs, self.extra = graphs, extra
        self.prefill_graph, self.decode_graph = flat_graph(graphs.prefill), flat_graph(graphs.decode)
        start = getattr(base.generation_config, "decoder_start_token_id", None)
        start = getattr(base.config, "decoder_start_token_id", None) if start is None else start
        if start is None:
            raise CallError(
                f"{type(base).__name__} has no decoder_start_token_id; "
                "set model.generation_config.decoder_start_token_id"
            )
        self.start = int(start)

    def first_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.full((input_ids.shape[0], 1), self.start, dtype=torch.long, device=input_ids.device)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new: int) -> torch.Tensor:
        self.mask = attention_mask
        out = self.prefill_graph(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=self.first_tokens(input_ids),
            **{self.graphs.cache_name: []},
            **self.extra,
            **self.graphs.static_inputs,
        )
        self.encoder_outputs = out["encoder_last_hidden_state"]
        return self._logits(out)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.decode_graph(
            attention_mask=self.mask,
            encoder_outputs=self.encoder_outputs,
            decoder_input_ids=tokens,
            **{self.graphs.cache_name: self.cache},
            **self.extra,
            **self.graphs.static_inputs,
        )
        return self._logits(out)

    def _logits(self, out: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        self.cache = out[self.graphs.cache_name]
        return out["logits"][0][:, -1, :].float()


def decode_loop(
    steps: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings
) -> torch.Tensor:
    """Choose tokens until ``max_new_tokens`` or every row has produced an EOS token."""
    prompt = steps.first_tokens(input_ids)
    batch, start = prompt.shape
    total = settings.max_new_tokens
    out = torch.full((batch, start + total), settings.pad_token_id, dtype=torch.long, device=prompt.device)
    out[:, :start] = prompt
    eos = torch.tensor(settings.eos_token_ids, dtype=torch.long, device=prompt.device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=prompt.device)
    logits = steps.prefill(input_ids, attention_mask, total)
    for step in range(total):
        tokens = choose_tokens(logits, settings)
        if len(eos):
            tokens = tokens.masked_fill(~unfinished, settings.pad_token_id)
            unfinished &= ~torch.isin(tokens, eos)
        out[:, start + step] = tokens
        if step + 1 == total or (len(eos) and not bool(unfinished.any())):
            return out[:, : start + step + 1]
        logits = steps.decode(tokens[:, None])
    return out
