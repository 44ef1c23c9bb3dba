"""Mixed-adapter batches, the graph side: ``model(..., adapter_names=["a", "b", "__base__", ...])``.

Each row of the batch runs with its own adapter in one batched computation. The
rewritten graph takes one extra input, ``graphpeft_adapter_rows`` (batch,) int64: the
row's slot among the batch's adapters, with the last slot for ``__base__``. At every
adapted site the methods combine their per-adapter weights into one tensor and pick
each row's part with ``index_select`` on the rows input:
  - IA3 stacks its vectors (slots, d), ones in slots without a claim, gathers (batch, d);
  - LoRA concatenates the adapters' A and B along the rank (ranks may differ) and gathers a
    per-row mask that keeps the row adapter's rank columns, times its scale (zeros for base).
There is no loop over adapters or rows at run time, and gradients reach every adapter's
own parameters, so mixed batches train as well as they infer. The call side (which graph
a call runs) is :mod:`graphpeft.runtime.mixed_batches`; generation's is
:mod:`graphpeft.generation.mixed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.utils._pytree as pytree
from torch import fx, nn
from torch.fx.graph import _PyTreeCodeGen

from ..errors import AdapterError, CallError, TraceError, did_you_mean
from ..rules.registry import get_method
from .adapter_names import BASE
from .claims import Claim
from .editor import SiteEditor
from .materialize import finish
from .sites import Site, graph_sites

if TYPE_CHECKING:
    from ..runtime.model import GraphPeftModel

ROWS = "graphpeft_adapter_rows"


def mixed_rows(
    model: GraphPeftModel, adapter_names: Sequence[str], batch: int | None
) -> tuple[tuple[str, ...], torch.Tensor]:
    """(the batch's adapters in slot order, (batch,) int64 slot per row; ``__base__`` is the last slot)."""
    order = slot_order(model, adapter_names, batch)
    device = next(model.base_model.parameters()).device
    rows = torch.tensor([order.index(n) if n != BASE else len(order) for n in adapter_names], device=device)
    return order, rows


def slot_order(model: GraphPeftModel, adapter_names: Sequence[str], batch: int | None) -> tuple[str, ...]:
    """The adapters the batch names, in the model's adapter order (their stacking slots)."""
    if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
        raise CallError(f"adapter_names must be a list with one adapter name per row, got {adapter_names!r}")
    if batch is not None and len(adapter_names) != batch:
        raise CallError(
            f"adapter_names has {len(adapter_names)} entries but the batch has {batch} rows; give one per row"
        )
    for name in adapter_names:
        if not isinstance(name, str):
            raise CallError(
                f"adapter_names holds {name!r}; give one adapter name (a string) per row, "
                f"or {BASE!r} for the base model"
            )
        if name != BASE and name not in model.adapter_specs:
            raise AdapterError(
                f"adapter_names names {name!r}, "
                f"which is no adapter of this model{did_you_mean(str(name), model.adapter_specs)}; "
                f"adapters: {', '.join(model.adapter_specs) or '(none)'}, or {BASE!r} for the base model"
            )
    if model._merged:
        raise AdapterError(
            f"adapters {', '.join(model._merged)} are merged; call unmerge() before mixed-adapter batches"
        )
    wanted = set(adapter_names)
    return tuple(a for a in model.adapter_specs if a in wanted)


def add_rows_input(gm: fx.GraphModule) -> fx.Node:
    """Give ``gm`` a new keyword input ``graphpeft_adapter_rows`` and return its placeholder."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    with gm.graph.inserting_after(placeholders[-1]):
        rows = gm.graph.placeholder(ROWS)
    codegen = gm.graph._codegen
    if not isinstance(codegen, _PyTreeCodeGen):
        raise TraceError("mixed-adapter batches need a graph traced with keyword inputs")
    info = codegen.pytree_info
    args_spec, kwargs_spec = info.in_spec.children()
    if kwargs_spec.type is not dict:
        raise TraceError("mixed-adapter batches need a graph traced with keyword inputs")
    new_kwargs = pytree.TreeSpec(dict, [*kwargs_spec.context, ROWS], [*kwargs_spec.children(), pytree.treespec_leaf()])
    in_spec = pytree.TreeSpec(tuple, None, [args_spec, new_kwargs])
    codegen.pytree_info = info._replace(orig_args=[*info.orig_args, ROWS], in_spec=in_spec)
    return rows


def rewrite_mixed(
    gm: fx.GraphModule,
    adapters: Sequence[tuple[str, Mapping[str, tuple[Site, Claim]]]],
    store: nn.Module,
    training: bool,
    skip_missing: bool = False,
) -> None:
    """Place the stacked ``adapters`` (name, claims; one slot each, in this order, + the base slot) on every
    site any of them claims.

    ``skip_missing`` leaves out claimed sites that ``gm`` never computes (an encoder-decoder's decode step)."""
    rows = add_rows_input(gm)
    order = tuple(name for name, _ in adapters)
    located = {s.key: (s, n) for s, n in graph_sites(gm)}
    wanted: dict[str, dict[str, list[Claim | None]]] = {}
    for slot, (_, adapter_claims) in enumerate(adapters):
        for key, (_, claim) in adapter_claims.items():
            per_method = wanted.setdefault(key, {})
            claims = per_method.setdefault(claim.method, [None] * (len(order) + 1))
            claims[slot] = claim
    for key, per_method in wanted.items():
        for method_name in per_method:
            if not get_method(method_name).mixable:
                raise AdapterError(
                    f"{method_name} adapters cannot serve mixed-adapter batches (site {key}); "
                    "mixed batches take LoRA (linear, without DoRA) and IA3 adapters"
                )
        if key not in located:
            if skip_missing:
                continue
            raise TraceError(f"site {key} is not in the graph traced for this call, so the adapters cannot be placed")
        site, node = located[key]
        output: fx.Node | None = node
        inner: frozenset[fx.Node] = frozenset()
        for method_name, claims in per_method.items():
            method = get_method(method_name)
            label = Claim("mixed", "+".join(c.rule for c in claims if c), method_name, {})
            edit = SiteEditor(gm, node, site, label, store, training, output, inner)
            method.rewrite_mixed(edit, claims, order, rows)
            output, inner = edit.output, inner | edit.created
    finish(gm)


def gather_rows(edit: SiteEditor, slices: list[fx.Node], rows: fx.Node, role: str) -> fx.Node:
    """Stack per-slot tensors into (n_slots, ...) and pick each row's slice: (batch, ...)."""
    stacked = edit.call(torch.ops.aten.stack.default, slices, 0, role=f"{role}_stack")
    return edit.call(torch.ops.aten.index_select.default, stacked, 0, rows, role=f"{role}_rows")


def row_shape(edit: SiteEditor, gathered: fx.Node) -> fx.Node:
    """``gathered`` (batch, d) viewed as (batch, 1, ..., 1, d) to broadcast against the site's tensors."""
    value = edit.site_node.meta.get("val")
    rank = value.dim() if value is not None else 3
    for _ in range(rank - 2):
        gathered = edit.call(torch.ops.aten.unsqueeze.default, gathered, 1, role="mixed_unsqueeze")
    return gathered


def check_mixable_site(edit: SiteEditor) -> None:
    """Rows are the leading dim of the site's input: refuse sites that flatten batch and sequence."""
    if edit.site.transposed or edit.site.op != "linear":
        raise AdapterError(
            f"site {edit.site.key} ({edit.site.op}{', GPT-2 Conv1D' if edit.site.transposed else ''}) cannot serve "
            "mixed-adapter batches: its input is not laid out with one leading row per batch entry"
        )
