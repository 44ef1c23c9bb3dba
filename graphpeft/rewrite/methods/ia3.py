"""IA3: learned vectors that rescale activations (Liu et al., "(IA)^3").

For a linear site with weight W (out, in) and input x (..., in):

    output scaling (keys, values):     y = (W x + b) ⊙ l      l: (out,)
    input scaling (feed-forward):      y = W (x ⊙ l) + b      l: (in,)

``l`` starts at ones, so a fresh adapter leaves the model unchanged. PEFT stores
``ia3_l`` as (out, 1) for output scaling and (1, in) for input scaling, also for
GPT-2 Conv1D sites; graphpeft owns the parameter in that same shape.
Merging multiplies the weight's output rows (and the bias) or input columns by l.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ...rules.options import Option
from ...rules.registry import register_method
from ...tracing.graph_utils import adapter_slot, container
from ..editor import SiteEditor
from ..mixed import check_mixable_site, gather_rows, row_shape
from ..sites import Site
from .base import Method, adapter_dtype

aten = torch.ops.aten
SLOT = "ia3_l"


def vector_shape(site: Site, feedforward: bool) -> tuple[int, int]:
    """PEFT's ``ia3_l`` shape: (1, in) for input scaling, (out, 1) for output scaling."""
    return (1, site.in_features) if feedforward else (site.out_features, 1)


class IA3(Method):
    name = "ia3"
    site_ops = ("linear",)
    mergeable = True
    mixable = True
    wrong_op = "IA3 adapts linear sites, not {op}"
    options: ClassVar[dict[str, Option]] = {
        "feedforward": Option(bool, False, "scale the site's input (PEFT's feedforward_modules) instead of its output"),
        "init": Option(
            str, "ones", "initialisation: ones (identity, as PEFT) or random (normal)", choices=("ones", "random")
        ),
    }

    def create(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        weight = model.get_parameter(site.weight_fqn)
        vector = torch.ones(
            vector_shape(site, options["feedforward"]), device=weight.device, dtype=adapter_dtype(weight)
        )
        if options["init"] == "random" and weight.device.type != "meta":
            nn.init.normal_(vector, mean=1.0, std=0.1)
        adapter_slot(container(store, site.host), SLOT, nn.ParameterDict, create=True)[adapter] = nn.Parameter(vector)

    def rewrite(self, edit: SiteEditor) -> None:
        if edit.options["feedforward"]:
            edit.before()
            flat = edit.call(aten.view.default, edit.param(SLOT), [-1], role="ia3_flat")
            x = edit.site_input
            scaled = edit.call(aten.mul.Tensor, x, flat, role="ia3_scale_input")
            edit.replace_input(x, scaled)
            return
        flat = edit.call(aten.view.default, edit.param(SLOT), [-1], role="ia3_flat")
        out = edit.call(aten.mul.Tensor, edit.output, flat, role="ia3_scale")
        edit.redirect(out)

    def rewrite_mixed(self, edit: SiteEditor, claims: list[Any], order: tuple[str, ...], rows: Any) -> None:
        """Per-row IA3: vectors stacked (slots, d) with ones for slots without a claim, gathered per row."""
        check_mixable_site(edit)
        for feedforward in (False, True):  # output scaling first: it inserts after the site node
            group = [c if c is not None and c.options["feedforward"] == feedforward else None for c in claims]
            if not any(group):
                continue
            if feedforward:
                edit.before()
            flats = [
                edit.call(aten.view.default, edit.param(SLOT, adapter=order[slot]), [-1], role="ia3_flat")
                if claim
                else None
                for slot, claim in enumerate(group)
            ]
            template = next(f for f in flats if f is not None)
            width = edit.site.in_features if feedforward else edit.site.out_features
            ones = edit.call(aten.new_ones.default, template, [width], role="ia3_identity")
            scale = row_shape(edit, gather_rows(edit, [f if f is not None else ones for f in flats], rows, "ia3"))
            if feedforward:
                x = edit.site_input
                edit.replace_input(x, edit.call(aten.mul.Tensor, x, scale, role="ia3_scale_input"))
            else:
                edit.redirect(edit.call(aten.mul.Tensor, edit.output, scale, role="ia3_scale"))

    # ------------------------------------------------------------------ merge
    def merge(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        self._fold(site, options, model, self._vector(site, store, adapter), invert=False)

    def unmerge(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        self._fold(site, options, model, self._vector(site, store, adapter), invert=True)

    def _fold(self, site: Site, options: dict[str, Any], model: nn.Module, vector: torch.Tensor, invert: bool) -> None:
        """Multiply (or divide) W's output rows / input columns, and the bias for output scaling, by l."""
        weight = model.get_parameter(site.weight_fqn)
        flat = vector.detach().float().flatten()
        factor = 1.0 / flat if invert else flat
        feedforward = options["feedforward"]
        # Linear weights are (out, in), Conv1D weights (in, out).
        along_rows = feedforward == site.transposed
        shaped = factor.view(-1, 1) if along_rows else factor.view(1, -1)
        with torch.no_grad():
            weight.copy_((weight.float() * shaped).to(weight.dtype))
            if not feedforward and site.bias is not None:
                bias = model.get_parameter(site.bias)
                bias.copy_((bias.float() * factor).to(bias.dtype))

    # ------------------------------------------------------------------ state
    def _vector(self, site: Site, store: nn.Module, adapter: str) -> torch.Tensor:
        return adapter_slot(container(store, site.host, create=False), SLOT, nn.ParameterDict)[adapter]

    def state(self, site: Site, store: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
        return {SLOT: self._vector(site, store, adapter)}

    def load_state(self, site: Site, store: nn.Module, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self._vector(site, store, adapter).copy_(tensors[SLOT])


register_method(IA3())
