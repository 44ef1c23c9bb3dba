"""Trace: model + call signature -> torch.export training-IR GraphModule.

For transformers models the example inputs are synthesized from the config and
the kwargs of the actual call (their names, dtypes and ranks), with dynamic batch
and sequence dims, so one graph serves every batch size and length. For any other
``nn.Module`` the caller's example inputs are used as they are.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.export import Dim

from .cache_spec import KEY_LENGTH, CacheSpec, mask_name
from ..errors import TraceError

EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_DECODER_SEQ = 2, 8, 5
_SEQUENCE_INPUTS = {"input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds"}


def is_transformers_model(model: nn.Module) -> bool:
    return hasattr(getattr(model, "config", None), "model_type")


def forward_parameters(model: nn.Module) -> list[str]:
    return list(inspect.signature(model.forward).parameters)


@dataclass(frozen=True)
class Signature:
    """What makes two calls need different graphs.

    ``inputs`` holds, per kwarg, ``(name, dtype, roles)`` for tensors, where ``roles``
    names each dim (``B`` batch, ``S`` sequence, ``T`` decoder sequence, or a fixed
    size), or ``(name, value)`` for constants (``return_dict=False``).
    """

    inputs: tuple[tuple[Any, ...], ...]
    training: bool
    device: str

    def names(self) -> list[str]:
        return [entry[0] for entry in self.inputs]


def _roles(name: str, tensor: torch.Tensor, encoder_decoder: bool) -> tuple[Any, ...]:
    shape = tuple(tensor.shape)
    if not shape:
        return ()
    if name.startswith("decoder_") or (name == "labels" and encoder_decoder and tensor.dim() == 2):
        return ("B", "T", *shape[2:])
    if name in _SEQUENCE_INPUTS or (name == "labels" and tensor.dim() >= 2):
        return ("B", "S", *shape[2:]) if len(shape) >= 2 else ("B",)
    return ("B", *shape[1:])


def signature_of(model: nn.Module, kwargs: Mapping[str, Any], training: bool, static: bool) -> Signature:
    """The graph key of a call. ``static`` keys on exact shapes (custom modules, out-of-range calls)."""
    encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    entries = []
    device = "cpu"
    for name in sorted(kwargs):
        value = kwargs[name]
        if isinstance(value, torch.Tensor):
            roles = tuple(value.shape) if static else _roles(name, value, encoder_decoder)
            entries.append((name, value.dtype, roles))
            device = str(value.device)
        elif CacheSpec.of(value) is not None:
            entries.append((name, CacheSpec.of(value)))
        else:
            entries.append((name, _freeze(value)))
    entries = _key_length_masks(entries)
    params = next(model.parameters(), None)
    if params is not None:
        device = str(params.device)
    return Signature(tuple(entries), training, device)


def _key_length_masks(entries: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """With a cache input, the mask spans cached + new positions: its length gets its own role."""
    spec = next((e[1] for e in entries if len(e) == 2 and isinstance(e[1], CacheSpec)), None)
    if spec is None:
        return entries
    return [(e[0], e[1], (e[2][0], KEY_LENGTH, *e[2][2:])) if len(e) == 3 and e[0] == mask_name(spec) else e for e in entries]


def _freeze(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _max_positions(config: Any) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > EXAMPLE_SEQ:
            return value
    return None


def example_inputs(model: nn.Module, signature: Signature) -> tuple[dict[str, Any], dict[str, Any]]:
    """Synthetic kwargs and ``dynamic_shapes`` for a transformers model and a signature."""
    config = model.config
    device = signature.device
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    max_len = _max_positions(config)
    dims = {
        "B": Dim("batch", min=1),
        "S": Dim("seq", min=1, max=max_len) if max_len else Dim("seq", min=1),
        "T": Dim("decoder_seq", min=1, max=max_len) if max_len else Dim("decoder_seq", min=1),
        KEY_LENGTH: Dim("key_seq", min=1),
    }
    sizes = {"B": EXAMPLE_BATCH, "S": EXAMPLE_SEQ, "T": EXAMPLE_DECODER_SEQ}
    kwargs: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for entry in signature.inputs:
        if len(entry) == 2 and isinstance(entry[1], CacheSpec):
            query = EXAMPLE_DECODER_SEQ if entry[1].encoder_decoder else EXAMPLE_SEQ
            sizes[KEY_LENGTH] = query + entry[1].length
    for entry in signature.inputs:
        if len(entry) == 2 and isinstance(entry[1], CacheSpec):
            kwargs[entry[0]], shapes[entry[0]] = entry[1].example(EXAMPLE_BATCH, dims["B"], max_len, device)
            continue
        if len(entry) == 2:
            kwargs[entry[0]] = entry[1]
            shapes[entry[0]] = None
            continue
        name, dtype, roles = entry
        shape = tuple(sizes.get(r, r) for r in roles)
        kwargs[name] = _fill(name, dtype, shape, vocab, config, device)
        shapes[name] = {i: dims[r] for i, r in enumerate(roles) if r in dims} or None
    return kwargs, shapes


def _fill(name: str, dtype: torch.dtype, shape: tuple[int, ...], vocab: int, config: Any, device: str) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype, device=device)
    if dtype == torch.bool or "attention_mask" in name:
        return torch.ones(shape, dtype=dtype, device=device)
    if name in ("token_type_ids",):
        return torch.zeros(shape, dtype=dtype, device=device)
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], device=device).expand(shape).to(dtype).contiguous()
    high = vocab
    if name == "labels" and len(shape) == 1:
        high = max(int(getattr(config, "num_labels", 2) or 2), 1)
    return torch.randint(0, high, shape, dtype=dtype, device=device)


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
def _quiet():
    """Silence export's logs, warnings and the partial graph it prints to stderr when it fails
    (hundreds of lines for a real model); the error itself is summarized by :class:`TraceError`."""
    loggers = [logging.getLogger(n) for n in ("torch._export", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
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
    copied in the graph (:mod:`graphpeft.block_reuse`; it falls back to this full export).
    """
    if reuse_blocks:
        from .block_reuse import export_reusing_blocks

        def export_cut() -> fx.GraphModule:
            return export_graph(model, args, kwargs, dynamic_shapes, training, runtime_asserts=runtime_asserts, reuse_blocks=False)

        graph = export_reusing_blocks(model, kwargs, export_cut)
        if graph is not None:
            return graph
    with _mode(model, training), _quiet():
        try:
            traced = _with_explicit_keywords(model, kwargs)

            def run(shapes: Any) -> Any:
                return torch.export.export(
                    traced, args, kwargs, dynamic_shapes=shapes, strict=False,
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
        graph.meta["graphpeft.dim_ranges"] = _dim_ranges(dynamic_shapes)
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

        forward.__signature__ = inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in names]
        )
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
            spec = dict(spec)
            for axis, dim in spec.items():
                if getattr(dim, "__name__", None) in fixes:
                    spec[axis] = fixes[dim.__name__]
                    changed = True
        out[key] = spec
    return out if changed else None


def _dim_ranges(dynamic_shapes: Any) -> dict[str, tuple[int, int]]:
    """Dim name -> (min, max) of the dims a graph was exported with."""
    ranges = {}
    if isinstance(dynamic_shapes, dict):
        for spec in dynamic_shapes.values():
            if isinstance(spec, dict):
                for dim in spec.values():
                    name = getattr(dim, "__name__", None)
                    if name:
                        ranges[name] = (int(getattr(dim, "min", 0)), int(min(getattr(dim, "max", 2**62), 2**62)))
    return ranges


_ROLE_DIM = {"B": "batch", "S": "seq", "T": "decoder_seq", KEY_LENGTH: "key_seq"}


def fits(graph: fx.GraphModule, signature: Signature, kwargs: Mapping[str, Any]) -> bool:
    """Whether the call's sizes lie inside the dim ranges ``graph`` was exported with."""
    ranges = graph.meta.get("graphpeft.dim_ranges", {})
    for entry in signature.inputs:
        if len(entry) != 3:
            continue
        name, _, roles = entry
        for axis, role in enumerate(roles):
            bounds = ranges.get(_ROLE_DIM.get(role, ""))
            if bounds and not bounds[0] <= kwargs[name].shape[axis] <= bounds[1]:
                return False
    return True


DTYPE_CHECKS = (torch.ops.aten._assert_tensor_metadata.default,)
RUNTIME_CHECKS = (*DTYPE_CHECKS, torch.ops.aten._assert_scalar.default)


def drop_checks(gm: fx.GraphModule, ops: tuple[Any, ...] = DTYPE_CHECKS) -> None:
    """Remove export's assert nodes of ``ops`` (and size arithmetic that only fed them) from ``gm``.

    ``_assert_tensor_metadata`` re-checks, on every call, the dtype of intermediate tensors, which
    the graph's key (input dtypes, train/eval, device) already fixes; on a small model each node is a
    measurable share of a call. ``_assert_scalar`` checks relations between sizes and stays unless the
    caller guarantees them (generate() does).
    """
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in ops:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def clone_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule with a copy of ``gm``'s graph and the same parameter tensors.

    Rewrites work on clones, so one export per call signature serves every adapter set.
    """
    graph = fx.Graph()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree spec deprecation noise from deepcopy
        graph._codegen = copy.deepcopy(gm.graph._codegen)
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    return fx.GraphModule(gm, graph)


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
