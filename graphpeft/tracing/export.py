"""Export: model + example inputs -> torch.export training-IR GraphModule.

For transformers models the example inputs are synthesized from the config and
the kwargs of the actual call (:mod:`.example_inputs`), with dynamic batch and
sequence dims, so one graph serves every batch size and length (:mod:`.signature`).
For any other ``nn.Module`` the caller's example inputs are used as they are.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from typing import Any

import torch
from torch import fx, nn
from torch.export import Dim

from ..errors import TraceError
from .block_reuse import export_reusing_blocks
from .signature import DIM_RANGES, dim_ranges


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool):
    previous = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for module, mode in previous.items():
            module.training = mode


@contextlib.contextmanager
def quiet():
    """Silence export's logs, warnings and the partial graph it prints to stderr when it fails
    (hundreds of lines for a real model); the error itself is summarized by :class:`TraceError`."""
    loggers = [
        logging.getLogger(n)
        for n in ("torch._export", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_graph(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dynamic_shapes: Any,
    training: bool,
    *,
    runtime_asserts: bool = False,
    reuse_blocks: bool = True,
) -> fx.GraphModule:
    """``torch.export`` (non-strict, training IR) of ``model`` in the given mode, as a GraphModule.

    The GraphModule reads the model's own parameter tensors (no copy). ``runtime_asserts``
    turns shape guards that export cannot prove into asserts inside the graph (needed for
    KV-cache graphs, whose cache length relates to the mask length). ``reuse_blocks`` lets a
    model with a long list of identical blocks be exported with a few of them and the rest
    copied in the graph (:mod:`.block_reuse`; it falls back to this full export).
    """
    if reuse_blocks:

        def export_cut() -> fx.GraphModule:
            return export_graph(
                model, args, kwargs, dynamic_shapes, training, runtime_asserts=runtime_asserts, reuse_blocks=False
            )

        graph = export_reusing_blocks(model, kwargs, export_cut)
        if graph is not None:
            return graph
    with _mode(model, training), quiet():
        try:
            traced = _with_explicit_keywords(model, kwargs)

            def run(shapes: Any) -> Any:
                return torch.export.export(
                    traced,
                    args,
                    kwargs,
                    dynamic_shapes=shapes,
                    strict=False,
                    prefer_deferred_runtime_asserts_over_guards=runtime_asserts,
                )

            try:
                program = run(dynamic_shapes)
            except Exception as exc:
                narrowed = _apply_suggested_fixes(dynamic_shapes, str(exc))
                if narrowed is None:
                    raise
                # e.g. T5 shifts labels right and needs decoder_seq >= 3: export what export can prove.
                dynamic_shapes = narrowed
                program = run(dynamic_shapes)
        except Exception as exc:  # export raises many types; summarize them all the same way
            raise TraceError(summarize_export_error(model, exc)) from exc
        graph = program.module()
        graph.meta[DIM_RANGES] = dim_ranges(dynamic_shapes)
        return graph


class _ExplicitKeywords(nn.Module):
    """``model`` under a forward signature that names every keyword of the call.

    transformers models take ``output_hidden_states``, ``return_dict`` and the like only
    through ``**kwargs``, and torch.export (2.13) cannot match ``dynamic_shapes`` to inputs
    inside ``**kwargs``. The wrapper shares ``model``'s submodules, parameters and buffers
    (the same dicts), so the exported graph reads the same tensors under the same names.
    """

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        for slot in ("_modules", "_parameters", "_buffers"):
            object.__setattr__(self, slot, getattr(model, slot))

        def forward(**kwargs: Any) -> Any:
            return model(**kwargs)

        keywords = inspect.Signature([inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in names])
        # inspect.signature (and so torch.export) reads __signature__
        setattr(forward, "__signature__", keywords)  # noqa: B010 - typing declares no __signature__ on functions
        object.__setattr__(self, "forward", forward)


def _with_explicit_keywords(model: nn.Module, kwargs: dict[str, Any]) -> nn.Module:
    parameters = inspect.signature(model.forward).parameters
    if all(name in parameters for name in kwargs):
        return model
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return model  # export reports the unexpected keyword itself
    return _ExplicitKeywords(model, list(kwargs))


_SUGGESTED_DIM = re.compile(r"(\w+) = Dim\('(\w+)'((?:, (?:min|max)=\d+)*)\)")


def _apply_suggested_fixes(dynamic_shapes: Any, message: str) -> Any:
    """``dynamic_shapes`` with the ranges export suggested in ``message``, or None if none apply."""
    if not isinstance(dynamic_shapes, dict) or "Suggested fixes" not in message:
        return None
    fixes = {}
    for name, _, bounds in _SUGGESTED_DIM.findall(message.split("Suggested fixes", 1)[1]):
        limits = dict(part.strip().split("=") for part in bounds.split(",") if part.strip())
        fixes[name] = Dim(name, **{k: int(v) for k, v in limits.items()})
    if not fixes:
        return None
    changed = False
    out = {}
    for key, spec in dynamic_shapes.items():
        if isinstance(spec, dict):
            fixed = dict(spec)
            for axis, dim in spec.items():
                if getattr(dim, "__name__", None) in fixes:
                    fixed[axis] = fixes[dim.__name__]
                    changed = True
            out[key] = fixed
        else:
            out[key] = spec
    return out if changed else None


def summarize_export_error(model: nn.Module, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), type(exc).__name__)
    if len(first) > 300:
        first = first[:300] + "..."
    return (
        f"torch.export could not trace {type(model).__name__}: {type(exc).__name__}: {first}\n"
        "graphpeft adapts models through their exported graph. Check that the model runs eagerly with these "
        "inputs, that its forward has no data-dependent Python control flow, and for custom modules pass "
        "example_inputs (and dynamic_shapes) that match how you call it. The full export error is chained "
        "below (raise ... from)."
    )
