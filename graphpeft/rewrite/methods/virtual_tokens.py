"""Virtual-token methods: prompt tuning, P-tuning and prefix tuning (P-tuning v2).

They add no nodes inside the graph: their tokens enter through the graph's inputs
(:mod:`graphpeft.rewrite.virtual_inputs`): prompt and P-tuning tokens as rows prepended to
``inputs_embeds``, prefix tokens as key/value cache entries at positions 0..nv-1.
The site a rule selects says where: the word-embedding site (prompt, P-tuning; its
width is the token width) or the attention sites (prefix tuning; one cache layer each).

One module per adapter produces the tokens, kept as ``adapters.prompt_encoder.<adapter>``
(PEFT's name). Its ``output()`` is the table PEFT saves as ``prompt_embeddings``:
(nv, d) (T5: (2·nv, d), of which the encoder uses the first nv) for prompt/P-tuning,
(nv, L·2·kv_heads·head_dim) for prefix tuning.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...errors import RuleError
from ...rules.options import Option, positive, probability
from ...rules.registry import register_method
from ...tracing.graph_utils import adapter_slot
from ...tracing.model_facts import forward_parameters, is_encoder_decoder, prefix_geometry
from ..editor import SiteEditor
from ..sites import Site
from .base import Method
from .prompt_encoders import PrefixProjection, PromptEncoder, PromptTable, VirtualTokenModule

SLOT = "prompt_encoder"
STATE_KEY = "prompt_embeddings"

_NUM_VIRTUAL_TOKENS = Option(int, 20, "number of virtual tokens", positive)


def virtual_token_options(**own: Option) -> dict[str, Option]:
    """``num_virtual_tokens``, which every virtual-token method takes, then the method's ``own`` options."""
    return {"num_virtual_tokens": _NUM_VIRTUAL_TOKENS, **own}


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def encoder_of(store: nn.Module, adapter: str) -> VirtualTokenModule:
    """The adapter's virtual-token module."""
    module = adapter_slot(store, SLOT, nn.ModuleDict)[adapter]
    assert isinstance(module, VirtualTokenModule)
    return module


class VirtualTokenMethod(Method):
    """Shared behaviour: one module per adapter, no graph nodes, PEFT's single ``prompt_embeddings`` tensor."""

    virtual_tokens = True

    def build(self, site: Site, options: dict[str, Any], model: nn.Module) -> VirtualTokenModule:
        raise NotImplementedError

    def table_shape(self, site: Site, options: dict[str, Any], model: nn.Module) -> tuple[int, int]:
        """(rows, width) of the table the module's ``output()`` gives (PEFT's ``prompt_embeddings``)."""
        raise NotImplementedError

    def state_shapes(self, site: Site, options: dict[str, Any], model: nn.Module) -> dict[str, tuple[int, ...]]:
        return {STATE_KEY: self.table_shape(site, options, model)}

    def create(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        modules = adapter_slot(store, SLOT, nn.ModuleDict, create=True)
        if adapter in modules:
            return  # prefix tuning claims one site per layer; its module is made once
        device = next(model.parameters()).device
        module = self.build(site, options, model).to(device)
        for param in module.parameters():
            param.requires_grad_(True)
        modules[adapter] = module

    def rewrite(self, edit: SiteEditor) -> None:
        """Nothing to insert: the runtime feeds these tokens through the graph's inputs."""

    def state(self, site: Site, store: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
        return {STATE_KEY: encoder_of(store, adapter).output()}

    def load_state(self, site: Site, store: nn.Module, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        """Load a saved table; a reparameterized encoder becomes the fixed table (PEFT's inference mode)."""
        module = encoder_of(store, adapter)
        table = tensors[STATE_KEY]
        if module.reparameterized:
            fixed = PromptTable(*table.shape).to(device=table.device, dtype=table.dtype)
            adapter_slot(store, SLOT, nn.ModuleDict)[adapter] = module = fixed
        with torch.no_grad():
            module.embedding.weight.copy_(table)


def _prompt_rows(options: dict[str, Any], model: nn.Module) -> int:
    """PEFT keeps one block of nv rows per transformer stack: 2·nv for encoder-decoders."""
    return options["num_virtual_tokens"] * (2 if is_encoder_decoder(model) else 1)


class EmbeddingTokenMethod(VirtualTokenMethod):
    """Prompt tuning and P-tuning: rows prepended to the word embeddings, so they target the embedding site."""

    site_ops = ("embedding",)
    wrong_op = 'virtual tokens are prepended to the word embeddings: target the embedding site (op = "embedding")'

    def table_shape(self, site: Site, options: dict[str, Any], model: nn.Module) -> tuple[int, int]:
        return _prompt_rows(options, model), site.out_features


class PromptTuning(EmbeddingTokenMethod):
    name = "prompt_tuning"
    peft_type = "PROMPT_TUNING"
    options = virtual_token_options(
        init=Option(
            str,
            "random",
            "random | sample_vocab (rows of the embedding matrix) | text",
            choices=("random", "sample_vocab", "text"),
        ),
        init_token_ids=Option(list, [], "init = text: token ids of the init text"),
        init_text=Option(str, "", "init = text: the text, tokenized with `tokenizer`"),
        tokenizer=Option(str, "", "init = text: a local tokenizer path for init_text (AutoTokenizer)"),
    )

    def check_site(self, site: Site, options: dict[str, Any]) -> str | None:
        if (
            options["init"] == "text"
            and not options["init_token_ids"]
            and not (options["init_text"] and options["tokenizer"])
        ):
            return 'init = "text" needs init_token_ids, or init_text together with tokenizer'
        return super().check_site(site, options)

    def build(self, site: Site, options: dict[str, Any], model: nn.Module) -> VirtualTokenModule:
        rows, width = self.table_shape(site, options, model)
        table = PromptTable(rows, width)
        words = model.get_parameter(site.weight_fqn).detach()
        if options["init"] == "sample_vocab":
            ids = torch.randint(0, words.shape[0], (rows,), device=words.device)
        elif options["init"] == "text":
            ids = torch.tensor(_repeat_to(_text_ids(options), rows), device=words.device)
        else:
            return table
        if int(ids.max()) >= words.shape[0] or int(ids.min()) < 0:
            raise RuleError(f"prompt_tuning init token ids must lie in [0, {words.shape[0]}) (the vocabulary)")
        table.embedding.weight = nn.Parameter(words[ids].clone().float())
        return table


def _text_ids(options: dict[str, Any]) -> list[int]:
    if options["init_token_ids"]:
        ids = options["init_token_ids"]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise RuleError(f"prompt_tuning init_token_ids must be integers, got {ids!r}")
        return list(ids)
    from transformers import AutoTokenizer  # noqa: PLC0415 - loaded on first use: only init_text tokenizes

    tokenizer = AutoTokenizer.from_pretrained(options["tokenizer"])
    return list(tokenizer(options["init_text"])["input_ids"])


def _repeat_to(ids: list[int], rows: int) -> list[int]:
    """Trim or repeat the init text's ids to exactly ``rows`` ids (PEFT's rule)."""
    return (ids * math.ceil(rows / len(ids)))[:rows]


class PTuning(EmbeddingTokenMethod):
    name = "p_tuning"
    peft_type = "P_TUNING"
    options = virtual_token_options(
        encoder=Option(str, "mlp", "reparameterization: mlp | lstm", choices=("mlp", "lstm")),
        encoder_hidden_size=Option(int, 0, "hidden size of the prompt encoder (0 = the token width)", _non_negative),
        encoder_num_layers=Option(int, 2, "LSTM layers (the MLP always has 3 linear layers, as in PEFT)", positive),
        encoder_dropout=Option(float, 0.0, "dropout between LSTM layers", probability),
    )

    def build(self, site: Site, options: dict[str, Any], model: nn.Module) -> VirtualTokenModule:
        rows, width = self.table_shape(site, options, model)
        hidden = options["encoder_hidden_size"] or width
        return PromptEncoder(
            rows, width, hidden, options["encoder"], options["encoder_num_layers"], options["encoder_dropout"]
        )


class PrefixTuning(VirtualTokenMethod):
    name = "prefix_tuning"
    peft_type = "PREFIX_TUNING"
    site_ops = ("attention",)
    wrong_op = 'prefix tuning adds keys and values to attention: target attention sites (op = "attention")'
    options = virtual_token_options(
        prefix_projection=Option(bool, False, "produce the prefix through an MLP (reparameterization)"),
        encoder_hidden_size=Option(int, 0, "hidden size of the projection MLP (0 = kv_heads·head_dim)", _non_negative),
    )

    def build(self, site: Site, options: dict[str, Any], model: nn.Module) -> VirtualTokenModule:
        params = forward_parameters(model)
        if "cache" not in params and "past_key_values" not in params:
            raise RuleError(
                "prefix_tuning feeds its keys/values through the KV cache, "
                f"and {type(model).__name__}.forward takes no "
                "cache (PEFT cannot prefix-tune it either); use prompt_tuning or p_tuning for this model"
            )
        _, kv_heads, head_dim = prefix_geometry(model.config)
        width = kv_heads * head_dim
        rows, out = self.table_shape(site, options, model)
        if options["prefix_projection"]:
            return PrefixProjection(rows, width, options["encoder_hidden_size"] or width, out)
        return PromptTable(rows, out)

    def table_shape(self, site: Site, options: dict[str, Any], model: nn.Module) -> tuple[int, int]:
        """(nv, layers · 2 · kv_heads · head_dim): keys and values of every layer per virtual token."""
        layers, kv_heads, head_dim = prefix_geometry(model.config)
        return options["num_virtual_tokens"], layers * 2 * kv_heads * head_dim


register_method(PromptTuning())
register_method(PTuning())
register_method(PrefixTuning())
