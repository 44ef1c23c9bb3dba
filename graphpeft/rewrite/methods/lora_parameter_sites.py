"""LoRA beyond module swapping: parameter sites, stacked experts, fused-output slices.

A parameter site computes ``y = x @ W`` (``aten.linear``/``addmm``/``mm``/``matmul``/``bmm``
or a grouped mm) where ``W`` is a parameter or a view of one; the LoRA update is taken
in the op's own orientation, whatever the parameter's layout:

    y = x W + (scale · x Aᵀ) Bᵀ          A: (r, in), B: (out, r)

Stacked weights (MoE experts, ``W``: (experts, in, out) fed to a grouped mm or bmm) get
one A/B per expert, A: (E, r, in), B: (E, out, r), applied with the base op itself
(same offsets, same grouping), so the adapted graph has no new control flow.

With ``slices`` (names from the site's ``split``), B has rows only for the chosen output
slices: the delta is added to those columns and the other columns are the base output's
own values, untouched. Merging adds the delta through the site's view chain, so a slice
of a fused ``in_proj_weight`` or a transposed expert stack is updated in place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import AdapterError, did_you_mean
from ..editor import SiteEditor
from ..param_views import replay, shares_storage
from ..sites import PARAM_SITE_OPS, Site
from .lora_common import initialise, register_slots, to_adapter_dtype, to_site_dtype

aten = torch.ops.aten


def handles(site: Site, options: dict[str, Any]) -> bool:
    """Whether a LoRA claim needs this module (a parameter site or chosen slices)."""
    return site.op in PARAM_SITE_OPS or bool(options.get("slices"))


# ---------------------------------------------------------------------- slices
def slice_layout(site: Site, options: dict[str, Any]) -> list[tuple[str, int, int, bool]]:
    """``(name, start, size, chosen)`` per part of the site's split, in output order."""
    out, start = [], 0
    chosen = set(options.get("slices") or ())
    for name, size in split_sizes(options["split"], site.out_features):
        out.append((name, start, size, name in chosen))
        start += size
    return out


def split_sizes(split: dict[str, int | float], width: int) -> list[tuple[str, int]]:
    """Sizes of a split: given as sizes summing to ``width``, or as proportions of it."""
    values = list(split.values())
    if all(isinstance(v, int) for v in values) and sum(values) == width:
        return [(name, value) for name, value in split.items() if isinstance(value, int)]
    total = sum(values)
    sizes = [(name, width * value / total) for name, value in split.items()]
    if any(abs(size - round(size)) > 1e-9 for _, size in sizes):
        raise ValueError(f"split {split} is neither sizes summing to the output width {width} nor proportions of it")
    return [(name, round(size)) for name, size in sizes]


def check(site: Site, options: dict[str, Any]) -> str | None:
    """Why LoRA cannot adapt ``site`` this way (None = it can)."""
    if options["dora"]:
        return "DoRA is not supported on parameter sites (matmul, grouped_mm) or on output slices; set dora = false"
    if site.op in ("embedding", "conv2d"):
        return f"slices apply to linear-like sites, not {site.op}; remove slices from the rule"
    slices = list(options.get("slices") or ())
    if not slices:
        return None
    split = options.get("split")
    if split is None:
        return (
            f"the rule picks slices {slices} but the site pattern gives no split; add "
            "split = {q = ..., k = ..., v = ...} (sizes or proportions of the output) to the site"
        )
    for name in slices:
        if name not in split:
            known = ", ".join(split)
            return f"slice {name!r} is not in the site's split{did_you_mean(name, split)}; its parts are {known}"
    try:
        split_sizes(split, site.out_features)
    except ValueError as exc:
        return f"{exc}; fix the site's split"
    return None


def _chosen_width(site: Site, options: dict[str, Any]) -> int:
    if not options.get("slices"):
        return site.out_features
    return sum(size for _, _, size, chosen in slice_layout(site, options) if chosen)


# ---------------------------------------------------------------------- parameters
def create(site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
    """A: (r, in) and B: (chosen out, r), with a leading experts dim for stacked weights."""
    weight = model.get_parameter(site.weight_fqn)
    r = options["r"]
    kwargs: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
    if weight.dtype in (torch.float16, torch.bfloat16):
        kwargs["dtype"] = torch.float32  # adapters train in fp32, as for module sites
    lead = (site.experts,) if site.experts else ()
    a = torch.empty(*lead, r, site.in_features, **kwargs)
    b = torch.empty(*lead, _chosen_width(site, options), r, **kwargs)
    if weight.device.type != "meta":
        for a_part, b_part in zip(a.view(-1, *a.shape[-2:]), b.view(-1, *b.shape[-2:]), strict=True):
            initialise(site, a_part, b_part, r, options["init"])
    register_slots(store, site, adapter, {"lora_A": a, "lora_B": b})


# ---------------------------------------------------------------------- rewrite
def rewrite(edit: SiteEditor, scale: float) -> None:
    """Insert ``y + B(scale · A x)`` (per expert for stacked weights), or its sliced form.

    As at module sites, the update runs in the adapter's dtype (fp32 adapters on a bf16/fp16 base:
    x is cast up) and the adapted output is rounded once to the site's dtype.
    """
    site, node, options = edit.site, edit.site_node, edit.options
    x = to_adapter_dtype(edit, edit.site_input)
    dropout = options["dropout"] if edit.training else 0.0
    if dropout > 0:
        x = edit.call(aten.dropout.default, x, float(dropout), True, role="lora_dropout")
    a, b = edit.param("lora_A"), edit.param("lora_B")
    if site.experts:
        a_t = edit.call(aten.transpose.int, a, -2, -1, role="lora_A_t")  # (E, in, r)
        b_t = edit.call(aten.transpose.int, b, -2, -1, role="lora_B_t")  # (E, r, out)
        if site.op == "grouped_mm":
            offsets = node.args[2] if len(node.args) > 2 else node.kwargs["offs"]
            grouped = _grouped_mm_for(
                node.target, edit.store.get_parameter(f"{site.host}.lora_A.{edit.claim.adapter}").dtype
            )
            down = edit.call(grouped, x, a_t, offsets, role="lora_down")
            down = edit.call(aten.mul.Tensor, down, scale, role="lora_scale")
            up = edit.call(grouped, down, b_t, offsets, role="lora_up")
        else:
            down = edit.call(aten.bmm.default, x, a_t, role="lora_down")
            down = edit.call(aten.mul.Tensor, down, scale, role="lora_scale")
            up = edit.call(aten.bmm.default, down, b_t, role="lora_up")
    else:
        down = edit.call(aten.linear.default, x, a, role="lora_down")
        # The scale multiplies the rank-r activations, as at module sites: B (s·h) = s·(B h).
        down = edit.call(aten.mul.Tensor, down, scale, role="lora_scale")
        up = edit.call(aten.linear.default, down, b, role="lora_up")
    if options.get("slices"):
        out = _add_to_slices(edit, up)
    else:
        out = edit.call(aten.add.Tensor, edit.output, up, role="lora_add")
    edit.redirect(to_site_dtype(edit, out))


def _grouped_mm_for(target: Any, dtype: torch.dtype) -> Any:
    """The grouped mm that multiplies ``dtype`` operands with the site's grouping: the site's own op, but
    ``aten._grouped_mm`` takes bf16 only (its meta and CUDA kernels; fp32 adapters on a bf16 expert stack),
    so other dtypes go through transformers' grouped-mm fallback, as transformers itself routes them."""
    if target is not aten._grouped_mm.default or dtype == torch.bfloat16:
        return target
    # loaded on first use (not at start-up): transformers' MoE integration registers grouped_mm_fallback
    import transformers.integrations.moe  # noqa: F401, PLC0415

    return torch.ops.transformers.grouped_mm_fallback.default


def _add_to_slices(edit: SiteEditor, delta: Any) -> Any:
    """``cat`` of the output's slices, the chosen ones plus their part of ``delta``."""
    pieces, offset = [], 0
    for name, start, size, chosen in slice_layout(edit.site, edit.options):
        piece = edit.call(aten.slice.Tensor, edit.output, -1, start, start + size, role=f"slice_{name}")
        if chosen:
            part = edit.call(aten.slice.Tensor, delta, -1, offset, offset + size, role=f"lora_delta_{name}")
            piece = edit.call(aten.add.Tensor, piece, part, role=f"lora_add_{name}")
            offset += size
        pieces.append(piece)
    return edit.call(aten.cat.default, pieces, -1, role="lora_add")


# ---------------------------------------------------------------------- merge
def full_b(site: Site, options: dict[str, Any], b: torch.Tensor) -> torch.Tensor:
    """B with zero rows for the slices the adapter leaves alone: (..., out, r)."""
    if not options.get("slices"):
        return b
    full = b.new_zeros(*b.shape[:-2], site.out_features, b.shape[-1])
    offset = 0
    for _, start, size, chosen in slice_layout(site, options):
        if chosen:
            full[..., start : start + size, :] = b[..., offset : offset + size, :]
            offset += size
    return full


def operand_delta(site: Site, options: dict[str, Any], a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · B A in the layout of the op's weight operand."""
    delta = (full_b(site, options, b.float()) @ a.float()) * scale  # (..., out, in)
    return delta.transpose(-2, -1) if site.transposed else delta


def merge(
    site: Site, options: dict[str, Any], model: nn.Module, a: torch.Tensor, b: torch.Tensor, scale: float, sign: float
) -> None:
    """Add (``sign`` = 1) or subtract (-1) the delta into the parameter through the view chain."""
    param = model.get_parameter(site.weight_fqn)
    with torch.no_grad():
        operand = replay(param, site.view)
        if not shares_storage(operand, param):
            raise AdapterError(
                f"cannot merge into {site.weight}: the op at {site.key} reads a copy of it, not a view; "
                "keep the adapter unmerged"
            )
        # the sum is taken in fp32 and rounded once to the weight's dtype, as module sites merge
        operand.copy_((operand.float() + sign * operand_delta(site, options, a, b, scale)).to(operand.dtype))
