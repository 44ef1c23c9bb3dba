"""Deployable export: the adapted model as a ``torch.export`` program (``.pt2``).

The rewritten graph (adapters as separate ops) or the base graph with the adapters
merged into the weights is exported again and saved with ``torch.export.save``.
``torch.export.load(path).module()`` runs it with torch alone: graphpeft is not needed,
a transformers model's output comes back as a plain ``dict`` (``out["logits"]``), and the
program calls aten ops only: transformers' grouped-mm fallback (MoE experts; a custom op
that only exists once transformers' MoE integration is imported) is replaced by the same
per-expert matmuls in aten ops (:func:`grouped_mm_segments`) before the export. A program
that still calls an op registered outside torch (a model's own custom op) is written with
a warning naming the import its loader needs.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from ..errors import CallError, SaveError
from ..io.output_file import atomic_file
from ..tracing.example_inputs import example_inputs
from ..tracing.export import quiet
from ..tracing.graph_utils import clone_graph
from ..tracing.signature import signature_of

if TYPE_CHECKING:
    from .model import GraphPeftModel

_GROUPED_MM_FALLBACK = "transformers.grouped_mm_fallback.default"
_TORCH_NAMESPACES = ("aten", "prims")


class _Deployable(nn.Module):
    """Calls one adapted graph with tensor keyword inputs (the traced constants, such as
    ``use_cache=False``, filled in) and returns its output as plain containers."""

    def __init__(self, graph: fx.GraphModule, constants: dict[str, Any]):
        super().__init__()
        self.adapted = graph
        self.constants = constants

    def forward(self, **kwargs: Any) -> Any:
        out = self.adapted(**kwargs, **self.constants)
        return dict(out.items()) if isinstance(out, Mapping) else out


def _deployable(graph: fx.GraphModule, constants: dict[str, Any], names: list[str]) -> _Deployable:
    """A :class:`_Deployable` whose forward signature names ``names``, so that the exported
    program takes exactly those keyword inputs (export binds inputs through the signature)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    signature = inspect.Signature([inspect.Parameter("self", kind)] + [inspect.Parameter(n, kind) for n in names])

    def forward(self: _Deployable, **kwargs: Any) -> Any:
        return _Deployable.forward(self, **kwargs)

    setattr(forward, "__signature__", signature)  # noqa: B010 - typing declares no __signature__ on functions
    cls = type("DeployedModel", (_Deployable,), {"forward": forward})
    return cls(graph, constants)


def export_program(model: GraphPeftModel, path: str | os.PathLike, merged: bool, kwargs: dict[str, Any]) -> None:
    """Write ``model`` (eval mode, active adapters, merged or not) to ``path`` as a ``.pt2`` program.

    ``kwargs`` are the inputs the deployed program takes (their names and dtypes; batch and
    sequence dims stay dynamic for transformers models); empty means ``input_ids`` and
    ``attention_mask``. A bad path fails before the export; a failed write leaves ``path`` as it was.
    """
    if not isinstance(merged, bool):
        raise CallError(f"export(merged=...) must be True or False, got {merged!r}")
    kwargs = model._bind((), dict(kwargs)) if kwargs else model._canonical_kwargs()
    with atomic_file(path) as temp, _eval(model), _merged_state(model, merged):
        graph = portable_graph(model._graph(kwargs))
        if model._transformers:
            example, shapes = example_inputs(model.base_model, signature_of(model.base_model, kwargs, False, False))
        else:
            example, shapes = kwargs, model._dynamic_shapes
        constants = {k: v for k, v in example.items() if not isinstance(v, torch.Tensor)}
        tensors = {k: v for k, v in example.items() if k not in constants}
        dynamic = {k: v for k, v in shapes.items() if k in tensors} if shapes else None
        wrapper = _deployable(graph, constants, list(tensors))
        with quiet():
            program = torch.export.export(wrapper, (), tensors, dynamic_shapes=dynamic, strict=False)
        try:  # inside the merged state: the program reads the live (merged) weights
            torch.export.save(program, os.fspath(temp))
        except (OSError, RuntimeError) as exc:
            raise SaveError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    _warn_foreign_ops(program, path)


# ---------------------------------------------------------------------- aten-only programs
def grouped_mm_segments(input: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the op schema's names
    """transformers' ``grouped_mm_fallback`` in aten ops: rows ``[offs[e-1], offs[e])`` of ``input``
    (S, in), sorted by expert, times ``weight[e]`` (in, out); rows past ``offs[-1]`` are zero.
    Returns (S, out). ``offs`` (experts,) becomes data-dependent sizes, checked at run time."""
    rows = input.shape[0]
    pieces, start = [], 0
    for expert, end in enumerate(offs.tolist()):
        torch._check(start <= end)
        torch._check(end <= rows)
        pieces.append(torch.mm(input.narrow(0, start, end - start), weight[expert]))
        start = end
    pieces.append(input.new_zeros(rows - start, weight.shape[2]))
    return torch.cat(pieces)


def portable_graph(graph: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``graph`` that holds only the tensors it reads (not the zero-storage placeholders of
    quantized weights) and whose grouped-mm fallback calls run :func:`grouped_mm_segments`."""
    copy = clone_graph(graph)
    for node in copy.graph.nodes:
        if str(node.target) == _GROUPED_MM_FALLBACK:
            node.target = grouped_mm_segments
    copy.recompile()
    return copy


def _warn_foreign_ops(program: torch.export.ExportedProgram, path: Any) -> None:
    """Warn, naming the import a loader needs, when ``program`` calls ops registered outside torch."""
    foreign = {
        node.target
        for node in program.graph.nodes
        if isinstance(node.target, torch._ops.OpOverload) and node.target.namespace not in _TORCH_NAMESPACES
    }
    if foreign:
        names = sorted(op.name() for op in foreign)
        imports = sorted({_registering_module(op) for op in foreign})
        warnings.warn(
            f"{path} calls {', '.join(names)}, registered outside torch; load it after `import "
            f"{', '.join(imports)}` (torch.export.load cannot find these ops otherwise)",
            stacklevel=4,  # the caller of GraphPeftModel.export
        )


def _registering_module(op: torch._ops.OpOverload) -> str:
    definition = torch._library.custom_ops.OPDEFS.get(op.name().split(".")[0])
    init = getattr(definition, "_init_fn", None)
    return getattr(init, "__module__", None) or f"<the library that defines {op.namespace}::*>"


# ---------------------------------------------------------------------- model state during the export
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
    if merged == bool(before):
        yield
        return
    weights = {
        site.weight: model.base_model.get_parameter(site.weight)
        for name in model.adapter_specs
        for site, _ in model.adapter_specs[name].claims.values()
        if site.weight is not None
    }
    saved = {fqn: param.detach().clone() for fqn, param in weights.items()}
    if merged:
        model.merge()
    else:
        model.unmerge()
    try:
        yield
    finally:
        if merged:
            model.unmerge()
        else:
            model.merge(before)
        with torch.no_grad():
            for fqn, param in weights.items():
                param.copy_(saved[fqn])
