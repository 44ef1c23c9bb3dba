"""The graphs a :class:`~graphpeft.runtime.model.GraphPeftModel` runs: one pristine export of the base model per call
signature (``_base_graphs``) and one rewritten clone per (signature, active adapters) (``_graphs``), made lazily.

Every rewritten graph reads the same adapter parameters; anything that changes which graph a call needs
(adding an adapter, ``.to()``, quantizing) clears the caches, and so does replacing a tensor or submodule of
the base model (:class:`BaseIdentity`).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from ..errors import CallError
from ..rewrite.pipeline import AdapterClaims, GraphSettings, adapt_graph, prepare_export
from ..rewrite.sites import Site, graph_sites, module_sites
from ..tracing.example_inputs import example_inputs
from ..tracing.export import export_graph
from ..tracing.graph_utils import clone_graph
from ..tracing.signature import fits, signature_of
from .call_inputs import canonical_kwargs
from .model_state import ModelState


class GraphDispatch(ModelState):
    """The graph half of ``GraphPeftModel``; it reads ``base_model``, ``adapters``, ``training``,
    ``checkpointing``, ``quantization``, the call settings (``_transformers``, ``_example``, ``_dynamic_shapes``)
    and the caches (``_graphs``, ``_base_graphs``, ``_sites``) set up by ``GraphPeftModel.__init__``."""

    def sites(self) -> list[Site]:
        """Every site of the base model's graph (traced once on demand), plus module sites."""
        if self._sites is None:
            gm = self._base_graph()
            self._sites = [site for site, _ in graph_sites(gm)] + module_sites(self.base_model)
        return self._sites

    def graph(self, **kwargs: Any) -> fx.GraphModule:
        """The rewritten GraphModule that a call with these kwargs runs (for inspection)."""
        self._ensure_live("graph()")
        return self._graph(self._bind((), kwargs))

    def _graph_adapters(self) -> tuple[str, ...]:
        if self._disabled:
            return ()
        return tuple(a for a in self.active_adapters if a not in self._merged)

    def _drop_graphs_of_replaced_tensors(self) -> None:
        """Drop every cached graph if a tensor or submodule of the base model was replaced since the graphs
        were traced (``load_state_dict(..., assign=True)``, ``module.weight = nn.Parameter(...)``): an export
        holds the parameter objects themselves, so it would go on reading the old ones."""
        if not self._base_identity.unchanged():
            self._graphs.clear()
            self._base_graphs.clear()
            self._base_identity = BaseIdentity(self.base_model)

    def _graph(self, kwargs: dict[str, Any]) -> fx.GraphModule:
        self._drop_graphs_of_replaced_tensors()
        adapters = self._graph_adapters()
        signature = self._signature(kwargs)
        if not adapters and not self.quantization:
            return self._traced(signature, kwargs)
        key = (signature, adapters)
        graph = self._graphs.get(key)
        if graph is None:
            training = signature.training
            settings = GraphSettings(
                training,
                quantized=bool(self.quantization),
                fuse_head_loss=training,
                checkpointing=self.checkpointing and training,
            )
            graph = adapt_graph(
                clone_graph(self._traced(signature, kwargs)),
                self.adapter_claims(adapters),
                self.base_model,
                self.adapters,
                settings,
            )
            self._graphs[key] = graph
        return graph

    def _signature(self, kwargs: dict[str, Any]) -> Any:
        """The graph key of a call: dynamic dims where the export's ranges allow, exact shapes otherwise."""
        static = not self._transformers and self._dynamic_shapes is None
        signature = signature_of(self.base_model, kwargs, self.training, static)
        if not fits(self._traced(signature, kwargs), signature, kwargs):
            signature = signature_of(self.base_model, kwargs, self.training, static=True)
        return signature

    def _traced(self, signature: Any, kwargs: dict[str, Any]) -> fx.GraphModule:
        """The unrewritten export of the base model for this signature (exported once, kept pristine)."""
        graph = self._base_graphs.get(signature)
        if graph is None:
            if torch.compiler.is_compiling():
                raise CallError(
                    "torch.compile reached a call whose graph graphpeft has not exported yet (torch.export cannot "
                    "run inside torch.compile). Call the model once eagerly with the same kind of inputs (same "
                    "train/eval mode, same keyword arguments) before the first compiled call."
                )
            if self._transformers:
                example, shapes = example_inputs(self.base_model, signature)
            else:
                example, shapes = kwargs, self._dynamic_shapes
            graph = export_graph(
                self.base_model, (), example, shapes, signature.training, reuse_blocks=self.reuse_blocks
            )
            prepare_export(graph)
            self._base_graphs[signature] = graph
        return graph

    def _canonical_kwargs(self) -> dict[str, Any]:
        return canonical_kwargs(self)

    def _base_graph(self) -> fx.GraphModule:
        """The unrewritten graph of the canonical call (input_ids + attention_mask)."""
        kwargs = self._canonical_kwargs()
        static = not self._transformers and self._dynamic_shapes is None
        return self._traced(signature_of(self.base_model, kwargs, self.training, static), kwargs)

    def adapter_claims(self, adapters: tuple[str, ...]) -> list[tuple[str, AdapterClaims]]:
        """``(name, claims)`` of each of ``adapters``, as :func:`graphpeft.rewrite.pipeline.adapt_graph` takes them."""
        return [(name, self._spec(name).claims) for name in adapters]

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # Graphs bake devices and dtypes into some ops (arange(..., device=cpu)); retrace after .to().
        self._ensure_live("moving or casting the model (.to(), .half(), ...)")
        self._graphs.clear()
        self._base_graphs.clear()
        out = super()._apply(fn, recurse)
        self._base_identity = BaseIdentity(self.base_model)
        return out


class BaseIdentity:
    """Which parameters, buffers and submodules a model holds, by identity (each slot of each module's
    ``_parameters``, ``_buffers`` and ``_modules``).

    :meth:`unchanged` is a pointer comparison per slot, about 30 µs per call for a 7B Llama's 940 slots (slow
    CPU), so every call can afford it; it sees replacements however they were made (setattr, assign-loads,
    accelerate's direct ``_parameters`` writes, swapped submodules). In-place changes keep the objects, and
    the graphs see them anyway.
    """

    def __init__(self, model: nn.Module):
        slots = [
            (d, k, v) for m in model.modules() for d in (m._parameters, m._buffers, m._modules) for k, v in d.items()
        ]
        self._dicts, self._keys, self._values = (
            (list(column) for column in zip(*slots, strict=True)) if slots else ([], [], [])
        )

    def unchanged(self) -> bool:
        return all(map(operator.is_, map(dict.get, self._dicts, self._keys), self._values))
