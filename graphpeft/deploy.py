"""Deployable export: the adapted model as a ``torch.export`` program (``.pt2``).

The rewritten graph (adapters as separate ops) or the base graph with the adapters
merged into the weights is exported again and saved with ``torch.export.save``.
``torch.export.load(path).module()`` runs it with torch alone: graphpeft is not needed,
and a transformers model's output comes back as a plain ``dict`` (``out["logits"]``), so
loading needs no transformers output classes either. Graphs that call ops registered by
another library (transformers' grouped-mm fallback in MoE experts) still need that library
imported before loading.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from .errors import SaveError
from .trace import _quiet, example_inputs, signature_of

if TYPE_CHECKING:
    from .runtime import GraphPeftModel


class _Deployable(nn.Module):
    """Calls one adapted graph with tensor keyword inputs (the traced constants, such as
    ``use_cache=False``, filled in) and returns its output as plain containers."""

    def __init__(self, graph: fx.GraphModule, constants: dict[str, Any]):
        super().__init__()
        self.adapted = graph
        self.constants = constants

    def forward(self, **kwargs: Any) -> Any:
        out = self.adapted(**kwargs, **self.constants)
        return {k: v for k, v in out.items()} if isinstance(out, Mapping) else out


def _deployable(graph: fx.GraphModule, constants: dict[str, Any], names: list[str]) -> _Deployable:
    """A :class:`_Deployable` whose forward signature names ``names``, so that the exported
    program takes exactly those keyword inputs (export binds inputs through the signature)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    signature = inspect.Signature([inspect.Parameter("self", kind)] + [inspect.Parameter(n, kind) for n in names])

    def forward(self: _Deployable, **kwargs: Any) -> Any:
        return _Deployable.forward(self, **kwargs)

    forward.__signature__ = signature  # type: ignore[attr-defined]
    cls = type("DeployedModel", (_Deployable,), {"forward": forward})
    return cls(graph, constants)


def export_program(model: GraphPeftModel, path: str | os.PathLike, merged: bool, kwargs: dict[str, Any]) -> None:
    """Write ``model`` (eval mode, active adapters, merged or not) to ``path`` as a ``.pt2`` program.

    ``kwargs`` are the inputs the deployed program takes (their names and dtypes; batch and
    sequence dims stay dynamic for transformers models); empty means ``input_ids`` and
    ``attention_mask``.
    """
    kwargs = model._bind((), dict(kwargs)) if kwargs else model._canonical_kwargs()
    with _eval(model), _merged_state(model, merged):
        graph = model._graph(kwargs)
        if model._transformers:
            example, shapes = example_inputs(model.base_model, signature_of(model.base_model, kwargs, False, False))
        else:
            example, shapes = kwargs, model._dynamic_shapes
        constants = {k: v for k, v in example.items() if not isinstance(v, torch.Tensor)}
        tensors = {k: v for k, v in example.items() if k not in constants}
        dynamic = {k: v for k, v in shapes.items() if k in tensors} if shapes else None
        wrapper = _deployable(graph, constants, list(tensors))
        with _quiet():
            program = torch.export.export(wrapper, (), tensors, dynamic_shapes=dynamic, strict=False)
        try:  # inside the merged state: the program reads the live (merged) weights
            torch.export.save(program, os.fspath(path))
        except OSError as exc:
            raise SaveError(f"cannot write {path}: {exc.strerror or exc}; choose a writable path") from None


@contextlib.contextmanager
def _eval(model: GraphPeftModel) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _merged_state(model: GraphPeftModel, merged: bool) -> Iterator[None]:
    """Fold the active adapters in (``merged``) or keep them separate, then restore the model
    exactly (weights are copied back, not unmerged up to rounding)."""
    before = list(model._merged)
    weights = {
        site.weight: model.base_model.get_parameter(site.weight)
        for name in model.adapter_specs
        for site, _ in model.adapter_specs[name].claims.values()
        if site.weight is not None
    }
    saved = {fqn: param.detach().clone() for fqn, param in weights.items()}
    if merged and not before:
        model.merge()
    elif not merged and before:
        model.unmerge()
    try:
        yield
    finally:
        if merged and not before:
            model.unmerge()
        elif not merged and before:
            model.merge(before)
        with torch.no_grad():
            for fqn, param in weights.items():
                param.copy_(saved[fqn])
