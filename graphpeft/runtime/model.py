"""GraphPeftModel: an ``nn.Module`` that runs rewritten graphs of a base model.

It owns the adapter parameters once (under ``adapters.<base fqn>.<slot>.<adapter>``)
and keeps one rewritten graph per call signature (kwargs, train/eval, device and
the active adapters), traced lazily; every graph reads the same parameters.

The class is assembled from one module per idea:

- :mod:`graphpeft.runtime.adapter_management`: add / set / delete / save / load adapters, parameter counts;
- :mod:`graphpeft.runtime.weight_folding`: merge / unmerge / unload, quantize / dequantize the base weights;
- :mod:`graphpeft.runtime.graph_dispatch`: the export and rewritten-graph caches, sites, tracing;
- :mod:`graphpeft.runtime.call_inputs`: binding and checking a call's inputs;
- :mod:`graphpeft.runtime.model_state`: the state those parts share, declared once for the type checker.

This module keeps the calling surface: construction, ``forward``, ``generate``, ``export``, ``explain``,
delegating to :mod:`.mixed_batches` (mixed-adapter batches), :mod:`graphpeft.generation`,
:mod:`.export_program` and :mod:`.explain_report`. ``graphpeft.apply`` and ``graphpeft.load`` make one
(:mod:`.wrap`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from ..errors import AdapterError, TraceError
from ..generation.generate import generate
from ..rewrite.quantized_base import Quantization
from ..rewrite.sites import Site
from ..rewrite.virtual_inputs import expand
from ..tracing.model_facts import forward_parameters, is_transformers_model
from .adapter_management import AdapterManagement, AdapterSpec
from .call_inputs import as_kwargs, bind_inputs, explained_failures
from .explain_report import explain_model
from .export_program import export_program
from .graph_dispatch import BaseIdentity, GraphDispatch
from .mixed_batches import mixed_call
from .weight_folding import WeightFolding


class GraphPeftModel(AdapterManagement, WeightFolding, GraphDispatch, nn.Module):
    """A base model whose forward runs adapter-rewritten export graphs.

    Call it like the base model (same kwargs, same output type). Use
    :func:`graphpeft.apply` or :func:`graphpeft.load` to make one.
    """

    # transformers' Trainer passes ``num_items_in_batch`` to models that accept loss kwargs; such
    # ``**kwargs`` tensors cannot be given dynamic shapes in torch.export (torch 2.13), so the Trainer is
    # told to normalise the loss itself, as it does for any model without loss kwargs.
    accepts_loss_kwargs = False

    def __init__(self, model: nn.Module, example_inputs: Any = None, dynamic_shapes: Any = None):
        super().__init__()
        self.base_model = model
        self.adapters = nn.Module()
        self.adapter_specs: dict[str, AdapterSpec] = {}
        self.active_adapters: list[str] = []
        self._graphs: dict[Any, fx.GraphModule] = {}  # (Signature, adapters) -> rewritten graph
        self._base_graphs: dict[Any, fx.GraphModule] = {}  # Signature -> pristine export
        self._merged: list[str] = []
        self._disabled = False
        self._transformers = is_transformers_model(model)
        self._params = forward_parameters(model)
        self._example, self._dynamic_shapes = as_kwargs(model, self._params, example_inputs), dynamic_shapes
        if not self._transformers and self._example is None:
            raise TraceError(
                f"{type(model).__name__} is not a transformers model, so graphpeft cannot synthesize inputs for "
                "tracing; pass example_inputs=(tensor, ...) or example_inputs={'x': tensor} to graphpeft.apply"
            )
        self._grad_before = {id(p): p.requires_grad for p in model.parameters()}
        # Code that inspects ``model.forward`` to learn the inputs (transformers' Trainer keeps only the
        # dataset columns named there) must see the base model's parameters, not ``*args, **kwargs``.
        signed_forward = functools.partial(type(self).forward, self)
        setattr(signed_forward, "__signature__", inspect.signature(model.forward))  # noqa: B010 - typing declares none on partial
        self.__dict__["forward"] = signed_forward
        self._sites: list[Site] | None = None  # every site, once sites() traced the base graph
        self.training = model.training
        # training graphs recompute each block in backward (graphpeft.rewrite.graph_passes.activation_checkpointing)
        self.checkpointing = False
        self.reuse_blocks = True  # export a few repeated blocks and copy the rest (graphpeft.tracing.block_reuse)
        self.quantization: Quantization | None = None  # what quantize() did (graphpeft.rewrite.quantized_base)
        self._unloaded = False  # unload() / merge_and_unload() handed the base back (graphpeft.runtime.ownership)
        self._base_identity = BaseIdentity(model)  # the base tensors the cached graphs read

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def _ensure_live(self, action: str) -> None:
        """Refuse ``action`` once :meth:`unload` handed the base model back: it would touch a model this
        wrapper no longer holds (and that may be adapted again, or merged)."""
        if self._unloaded:
            raise AdapterError(
                f"{action} on a GraphPeftModel that was unloaded: unload() / merge_and_unload() handed its base "
                "model back; apply graphpeft again to the returned model (graphpeft.apply or graphpeft.load)"
            )

    def train(self, mode: bool = True) -> GraphPeftModel:
        self._ensure_live("train()" if mode else "eval()")
        return super().train(mode)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._ensure_live("load_state_dict()")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Run the base model's forward with the active adapters.

        ``adapter_names`` (one name per row, ``"__base__"`` for none) runs a mixed-adapter batch:
        each row with its own adapter, in one batched graph (see :mod:`graphpeft.rewrite.mixed`).
        Virtual-token adapters add their tokens to the inputs first (see :mod:`graphpeft.rewrite.virtual_inputs`).
        """
        self._ensure_live("forward()")
        kwargs = self._bind(args, kwargs)
        with explained_failures(self, kwargs):
            if adapter_names is not None:
                self._refuse_quantized("a mixed-adapter batch")
                return mixed_call(self, kwargs, adapter_names)
            expanded = expand(self, kwargs, self._graph_adapters())
            return self._graph(expanded)(**expanded)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        adapter_names: Sequence[str] | None = None,
        **unsupported: Any,
    ) -> torch.Tensor:
        """Greedy or sampled decoding on the adapted prefill and decode graphs, with a KV cache.

        ``None`` options take the model's ``generation_config``; ``eos_token_id=[]`` never stops early.
        Returns token ids like transformers' ``generate``: prompt + new tokens (decoder-only), or decoder ids with
        the start token first (encoder-decoder). ``adapter_names`` (one per row, ``"__base__"`` for none)
        generates each row with its own adapter in one batched computation. See :mod:`graphpeft.generation`.
        """
        self._ensure_live("generate()")
        self._refuse_quantized("generate()")
        self._drop_graphs_of_replaced_tensors()
        options = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            generator=generator,
        )
        with explained_failures(self, {"input_ids": input_ids}):
            return generate(self, input_ids, attention_mask, adapter_names, **options, **unsupported)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        return bind_inputs(self, args, kwargs)

    def export(self, path: str, merged: bool = False, **kwargs: Any) -> None:
        """Save the adapted model (eval mode) as a ``torch.export`` program that runs without graphpeft.

        ``merged=True`` folds the active adapters into the weights for the export (the model is
        restored afterwards). ``kwargs`` name the inputs the program takes (default ``input_ids``
        and ``attention_mask``). Load it with ``torch.export.load(path).module()``.
        """
        self._ensure_live("export()")
        export_program(self, path, merged, kwargs)

    def explain(self, adapter_names: Sequence[str] | None = None, show: bool = False) -> Any:
        """An :class:`~graphpeft.runtime.explain_report.ExplainReport` of the adapters (sites, rules, shapes, counts);
        ``show=True`` also prints it."""
        report = explain_model(self, adapter_names)
        if show:
            report.print()
        return report
