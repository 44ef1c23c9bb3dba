"""LoRA (and rsLoRA, DoRA) on linear, GPT-2 Conv1D, embedding and conv2d sites.

For a linear site with weight W (out, in) and input x (..., in):

    y = W x + b + scale · B (A (dropout(x)))      A: (r, in), B: (out, r)

with scale = alpha / r, or alpha / √r for rsLoRA. DoRA (as PEFT defines it)
rescales each output row by m / ‖W + scale·B A‖ (norm taken on detached LoRA
weights, then detached): y = m̂ ⊙ (W x + scale · B A x) + b.
Embedding sites use A: (r, vocab), B: (dim, r) and no dropout, as PEFT does.
Parameter names and on-disk keys follow PEFT. Parameter sites (``matmul``, ``grouped_mm``:
weights reached through functional calls, views or expert stacks) and output slices of
fused projections (option ``slices``) are handled in :mod:`.lora_parameter_sites`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import AdapterError
from ...rules.options import Option, positive, probability
from ...rules.registry import register_method
from ...tracing.graph_utils import adapter_slot, container
from ..editor import SiteEditor
from ..mixed import check_mixable_site, row_shape
from ..sites import PARAM_SITE_OPS, Site
from . import lora_parameter_sites
from .base import Method
from .lora_common import initialise, register_slots, scale_of, slot_names, to_adapter_dtype, to_site_dtype

aten = torch.ops.aten


def _weight_out_in(site: Site, weight: torch.Tensor) -> torch.Tensor:
    """The base weight as (out, in) (embedding: (dim, vocab))."""
    if site.op == "embedding" or site.transposed:
        return weight.t()
    return weight


def _rank_problem(site: Site, r: int) -> str | None:
    """A rank above the layer's adds parameters but no expressiveness, and a huge one exhausts memory: refuse it."""
    out_features, in_features = _matrix_shape(site)
    most = min(out_features, in_features)
    if r <= most:
        return None
    return (
        f"r={r} is larger than its {out_features}x{in_features} weight allows (rank at most {most}); choose r <= {most}"
    )


def _matrix_shape(site: Site) -> tuple[int, int]:
    """(out, in) of the matrix the update B A adds to (one expert's; conv2d: (out_ch, in_ch·kh·kw))."""
    if site.op == "conv2d" and site.weight_shape is not None:
        out_ch, in_ch, kh, kw = site.weight_shape
        return out_ch, in_ch * kh * kw
    return site.out_features, site.in_features


def _distinct_names(value: Any) -> str | None:
    if all(isinstance(v, str) and v for v in value) and len(set(value)) == len(value):
        return None
    return 'must be a list of distinct slice names, e.g. ["q", "v"]'


class LoRA(Method):
    name = "lora"
    site_ops = ("linear", "embedding", "conv2d")  # plus the parameter sites (lora_parameter_sites)
    mergeable = True
    mixable = True
    options: ClassVar[dict[str, Option]] = {
        "r": Option(int, 8, "rank of the update", check=positive),
        "alpha": Option((int, float), 8, "scale numerator (PEFT's lora_alpha)", check=positive),
        "dropout": Option((int, float), 0.0, "dropout on the adapter input (linear sites)", check=probability),
        "rslora": Option(bool, False, "scale by alpha/sqrt(r) instead of alpha/r"),
        "dora": Option(bool, False, "weight-decomposed LoRA (magnitude vector per output)"),
        "init": Option(str, "default", "initialisation", choices=("default", "gaussian", "random")),
        "slices": Option(
            (list, tuple),
            (),
            "output slices to adapt, by name from the site's split (empty: the whole output)",
            check=_distinct_names,
        ),
    }

    def check_site(self, site: Site, options: dict[str, Any]) -> str | None:
        if site.op not in self.site_ops and site.op not in PARAM_SITE_OPS:
            return (
                f"LoRA adapts {', '.join(self.site_ops)} sites, not {site.op}; "
                f"parameter sites ({', '.join(PARAM_SITE_OPS)}) too"
            )
        if site.op == "conv2d" and options["dora"]:
            return "DoRA on conv2d sites is not supported by graphpeft"
        if lora_parameter_sites.handles(site, options):
            problem = lora_parameter_sites.check(site, options)
            if problem:
                return problem
        return _rank_problem(site, options["r"])

    # ------------------------------------------------------------------ parameters
    def create(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        if lora_parameter_sites.handles(site, options):
            lora_parameter_sites.create(site, options, model, store, adapter)
            return
        weight = model.get_parameter(site.weight_fqn)
        r, init = options["r"], options["init"]
        kwargs: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
        if weight.dtype in (torch.float16, torch.bfloat16):
            kwargs["dtype"] = torch.float32  # adapters train in fp32 (PEFT's autocast_adapter_dtype)
        if site.op == "conv2d":
            out_ch, in_ch, kh, kw = weight.shape
            a = torch.empty(r, in_ch, kh, kw, **kwargs)
            b = torch.empty(out_ch, r, 1, 1, **kwargs)
        else:
            a = torch.empty(r, site.in_features, **kwargs)
            b = torch.empty(site.out_features, r, **kwargs)
        if weight.device.type != "meta":
            initialise(site, a, b, r, init)
        slot_a, slot_b = slot_names(site)
        register_slots(store, site, adapter, {slot_a: a, slot_b: b})
        if options["dora"]:
            magnitude = torch.empty(site.out_features, **kwargs)
            if weight.device.type != "meta":
                magnitude = self._weight_norm(site, weight, a, b, scale_of(options))
            register_slots(store, site, adapter, {"lora_magnitude_vector": magnitude})

    def _delta(self, site: Site, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
        """scale · B A in the base weight's own layout."""
        if site.op == "conv2d":
            r = a.shape[0]
            return (b.reshape(-1, r) @ a.reshape(r, -1)).reshape(b.shape[0], *a.shape[1:]) * scale
        delta = (b @ a) * scale  # (out, in) / (dim, vocab)
        return delta.t() if (site.op == "embedding" or site.transposed) else delta

    def _weight_norm(
        self, site: Site, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """‖W + scale·B A‖ per output row, shape (out,)."""
        with torch.no_grad():
            combined = _weight_out_in(site, weight).to(a.dtype) + scale * (b @ a)
            return torch.linalg.norm(combined, dim=1)

    # ------------------------------------------------------------------ rewrite
    def rewrite(self, edit: SiteEditor) -> None:
        site, node, options = edit.site, edit.site_node, edit.options
        scale = scale_of(options)
        if site.op == "embedding":
            self._rewrite_embedding(edit, scale)
            return
        if lora_parameter_sites.handles(site, options):
            lora_parameter_sites.rewrite(edit, scale)
            return
        x = to_adapter_dtype(edit, edit.site_input)
        dropout = options["dropout"] if edit.training else 0.0
        x_in = edit.call(aten.dropout.default, x, float(dropout), True, role="lora_dropout") if dropout > 0 else x
        a, b = edit.param("lora_A"), edit.param("lora_B")
        if site.op == "conv2d":
            stride = node.args[3] if len(node.args) > 3 else [1, 1]
            padding = node.args[4] if len(node.args) > 4 else [0, 0]
            down = edit.call(aten.conv2d.default, x_in, a, None, stride, padding, role="lora_down")
        else:
            down = edit.call(aten.linear.default, x_in, a, role="lora_down")
        if not options["dora"]:
            # The scale multiplies the rank-r activations, not the (..., out) ones: B (s·h) = s·(B h).
            up = self._up(edit, edit.call(aten.mul.Tensor, down, scale, role="lora_scale"), b)
            out = edit.call(aten.add.Tensor, edit.output, up, role="lora_add")
            edit.redirect(to_site_dtype(edit, out))
            return
        up = self._up(edit, down, b)
        # DoRA: delta = (m̂ - 1) ⊙ (W x) + m̂ ⊙ scale · B A x, with m̂ = m / ‖W + scale·BA‖ (detached).
        weight = node.args[2] if site.transposed else node.args[1]
        w_oi = edit.call(aten.t.default, weight, role="dora_weight_t") if site.transposed else weight
        norm = self._norm_nodes(edit, w_oi, a, b, scale)
        mag = edit.call(aten.div.Tensor, edit.param("lora_magnitude_vector"), norm, role="dora_mag_scale")
        if dropout > 0:
            base = edit.call(aten.linear.default, x_in, w_oi, role="dora_base")
        else:
            bias = node.args[0] if site.transposed else (node.args[2] if len(node.args) > 2 else None)
            base = edit.call(aten.sub.Tensor, node, bias, role="dora_base") if bias is not None else node
        mag_minus = edit.call(aten.sub.Tensor, mag, 1.0, role="dora_mag_minus_one")
        base_part = edit.call(aten.mul.Tensor, base, mag_minus, role="dora_base_scaled")
        mag_scaled = edit.call(aten.mul.Tensor, mag, scale, role="lora_scale")  # (out,): cheaper than scaling up
        lora_part = edit.call(aten.mul.Tensor, up, mag_scaled, role="dora_lora_mag")
        delta = edit.call(aten.add.Tensor, base_part, lora_part, role="dora_delta")
        out = edit.call(aten.add.Tensor, edit.output, delta, role="lora_add")
        edit.redirect(to_site_dtype(edit, out))

    def _up(self, edit: SiteEditor, down: Any, b: Any) -> Any:
        """B applied to the rank-r activations ``down``."""
        if edit.site.op == "conv2d":
            return edit.call(aten.conv2d.default, down, b, role="lora_up")
        return edit.call(aten.linear.default, down, b, role="lora_up")

    def _norm_nodes(self, edit: SiteEditor, w_oi: Any, a: Any, b: Any, scale: float) -> Any:
        lora_w = edit.call(
            aten.detach.default,
            edit.call(aten.mm.default, b, a, role="dora_lora_weight"),
            role="dora_lora_weight_detached",
        )
        combined = edit.call(
            aten.add.Tensor,
            w_oi,
            edit.call(aten.mul.Tensor, lora_w, scale, role="dora_lora_weight_scaled"),
            role="dora_combined",
        )
        norm = edit.call(aten.linalg_vector_norm.default, combined, 2, [1], role="dora_weight_norm")
        return edit.call(aten.detach.default, norm, role="dora_weight_norm_detached")

    def _rewrite_embedding(self, edit: SiteEditor, scale: float) -> None:
        node, options = edit.site_node, edit.options
        ids = node.args[1]
        padding_idx = node.args[2] if len(node.args) > 2 else -1
        a, b = edit.param("lora_embedding_A"), edit.param("lora_embedding_B")
        a_t = edit.call(aten.t.default, a, role="lora_embedding_A_t")
        down = edit.call(aten.embedding.default, a_t, ids, padding_idx, role="lora_down")
        down = edit.call(aten.mul.Tensor, down, scale, role="lora_scale")  # rank-r activations, as for linear sites
        scaled = edit.call(
            aten.matmul.default, down, edit.call(aten.t.default, b, role="lora_embedding_B_t"), role="lora_up"
        )
        if not options["dora"]:
            out = edit.call(aten.add.Tensor, edit.output, scaled, role="lora_add")
            edit.redirect(to_site_dtype(edit, out))
            return
        # PEFT's DoRA embedding: y = m̂ ⊙ (E[ids] + scale · A^T[ids] B^T), m̂ over the embedding dim.
        w_t = edit.call(aten.t.default, node.args[0], role="dora_weight_t")
        norm = self._norm_nodes(edit, w_t, a, b, scale)
        mag = edit.call(aten.div.Tensor, edit.param("lora_magnitude_vector"), norm, role="dora_mag_scale")
        total = edit.call(aten.add.Tensor, node, scaled, role="dora_sum")
        out = edit.call(aten.mul.Tensor, total, mag, role="lora_add")
        edit.redirect(to_site_dtype(edit, out))

    def rewrite_mixed(self, edit: SiteEditor, claims: list[Any], order: tuple[str, ...], rows: Any) -> None:
        """Per-row LoRA with the adapters' ranks concatenated: A_cat (Σr, in), B_cat (out, Σr).

        down = x A_catᵀ (..., Σr) is multiplied by each row's mask (batch, Σr), which holds the row
        adapter's scale on that adapter's rank columns and zeros elsewhere (all zeros for the base
        slot), then up = masked B_catᵀ. Ranks may differ; no padding is needed. Two plain matmuls
        over Σr columns cost less than per-row batched matmuls for the few adapters a batch mixes.
        """
        check_mixable_site(edit)
        present = [(slot, c) for slot, c in enumerate(claims) if c is not None]
        if any(lora_parameter_sites.handles(edit.site, c.options) for _, c in present):
            raise AdapterError(f"LoRA on output slices cannot serve mixed-adapter batches (site {edit.site.key})")
        if any(c.options["dora"] for _, c in present):
            raise AdapterError(f"DoRA adapters cannot serve mixed-adapter batches (site {edit.site.key})")
        dropouts = {float(c.options["dropout"]) for _, c in present} if edit.training else {0.0}
        if len(dropouts) > 1:
            raise AdapterError(
                f"adapters on site {edit.site.key} use different LoRA dropouts {sorted(dropouts)}; "
                "a mixed-adapter training batch needs one dropout per site"
            )
        first = order[present[0][0]]
        x = to_adapter_dtype(edit, edit.site_input, first)
        if max(dropouts) > 0:
            x = edit.call(aten.dropout.default, x, max(dropouts), True, role="lora_dropout")
        a_parts, b_parts, masks, width = [], [], [], 0
        for slot, claim in present:
            a_parts.append(edit.param("lora_A", adapter=order[slot]))
            b_parts.append(edit.param("lora_B", adapter=order[slot]))
            masks.append((slot, width, width + claim.options["r"], scale_of(claim.options)))
            width += claim.options["r"]
        template = edit.store.get_parameter(f"{edit.site.host}.lora_A.{order[present[0][0]]}")
        mask = torch.zeros(len(claims), width, dtype=template.dtype, device=template.device)
        for slot, start, stop, scale in masks:
            mask[slot, start:stop] = scale
        a_cat = edit.call(aten.cat.default, a_parts, 0, role="lora_A_cat") if len(a_parts) > 1 else a_parts[0]
        b_cat = edit.call(aten.cat.default, b_parts, 1, role="lora_B_cat") if len(b_parts) > 1 else b_parts[0]
        row_mask = edit.call(aten.index_select.default, edit.constant("lora_row_mask", mask), 0, rows, role="lora_rows")
        down = edit.call(aten.linear.default, x, a_cat, role="lora_down")
        masked = edit.call(aten.mul.Tensor, down, row_shape(edit, row_mask), role="lora_mask")
        up = edit.call(aten.linear.default, masked, b_cat, role="lora_up")
        edit.redirect(to_site_dtype(edit, edit.call(aten.add.Tensor, edit.output, up, role="lora_add"), first))

    # ------------------------------------------------------------------ merge
    def merge(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        if lora_parameter_sites.handles(site, options):
            lora_parameter_sites.merge(site, options, model, *self._ab(site, store, adapter), scale_of(options), 1.0)
            return
        weight = model.get_parameter(site.weight_fqn)
        a, b = self._ab(site, store, adapter)
        scale = scale_of(options)
        with torch.no_grad():
            delta = self._delta(site, a.float(), b.float(), scale)
            merged = weight.float() + delta
            if options["dora"]:
                norm = self._weight_norm(site, weight.float(), a.float(), b.float(), scale)
                factor = self._magnitude(site, store, adapter).float() / norm
                _dora_norms(store, site)[adapter] = norm
                merged = merged * (
                    factor.view(1, -1) if (site.op == "embedding" or site.transposed) else factor.view(-1, 1)
                )
            weight.copy_(merged.to(weight.dtype))

    def unmerge(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        if lora_parameter_sites.handles(site, options):
            lora_parameter_sites.merge(site, options, model, *self._ab(site, store, adapter), scale_of(options), -1.0)
            return
        weight = model.get_parameter(site.weight_fqn)
        a, b = self._ab(site, store, adapter)
        with torch.no_grad():
            restored = weight.float()
            if options["dora"]:
                norm = _dora_norms(store, site).pop(adapter)
                factor = self._magnitude(site, store, adapter).float() / norm
                restored = restored / (
                    factor.view(1, -1) if (site.op == "embedding" or site.transposed) else factor.view(-1, 1)
                )
            restored = restored - self._delta(site, a.float(), b.float(), scale_of(options))
            weight.copy_(restored.to(weight.dtype))

    def _ab(self, site: Site, store: nn.Module, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        slot_a, slot_b = slot_names(site)
        host = container(store, site.host, create=False)
        a, b = (adapter_slot(host, name, nn.ParameterDict)[adapter] for name in (slot_a, slot_b))
        return a, b

    def _magnitude(self, site: Site, store: nn.Module, adapter: str) -> torch.Tensor:
        host = container(store, site.host, create=False)
        return adapter_slot(host, "lora_magnitude_vector", nn.ParameterDict)[adapter]

    # ------------------------------------------------------------------ state
    def state(self, site: Site, store: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
        a, b = self._ab(site, store, adapter)
        if site.op == "embedding":
            out = {"lora_embedding_A": a, "lora_embedding_B": b}
        else:
            out = {"lora_A.weight": a, "lora_B.weight": b}
        host = container(store, site.host, create=False)
        if "lora_magnitude_vector" in host._modules:
            magnitudes = adapter_slot(host, "lora_magnitude_vector", nn.ParameterDict)
            if adapter in magnitudes:
                out["lora_magnitude_vector"] = magnitudes[adapter]
        return out

    def load_state(self, site: Site, store: nn.Module, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        for key, param in self.state(site, store, adapter).items():
            with torch.no_grad():
                param.copy_(tensors[key])


def _dora_norms(store: nn.Module, site: Site) -> dict[str, torch.Tensor]:
    """Weight norms cached at merge time, so unmerge can invert the DoRA factor."""
    host = container(store, site.host, create=False)
    if "_dora_merge_norms" not in host.__dict__:
        host.__dict__["_dora_merge_norms"] = {}
    return host.__dict__["_dora_merge_norms"]


register_method(LoRA())
