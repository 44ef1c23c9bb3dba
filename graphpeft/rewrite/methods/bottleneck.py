"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020; He et al. 2022 "parallel").

At a linear site whose output h (..., d) is a block's output before the residual add
(attention ``o_proj``, FFN ``down_proj``):

    sequential:  h' = h + scaling · up(act(down(h)))
    parallel:    h' = h + scaling · up(act(down(x)))     x: the input of the block named by ``input_of``

with down: (bottleneck, d) + bias, up: (d, bottleneck) + bias, bottleneck = ``bottleneck_size``
or d // ``reduction_factor``. ``up`` starts at zeros, so a fresh adapter is the identity.
The non-linearity makes the adapter impossible to fold into a weight: it is not mergeable.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import fx, nn

from ...errors import TraceError
from ...rules.options import Option, positive
from ...rules.registry import register_method
from ...tracing.graph_utils import adapter_slot, container
from ..editor import SiteEditor
from ..sites import Site
from .base import Method, adapter_dtype

aten = torch.ops.aten

ACTIVATIONS = {
    "relu": aten.relu.default,
    "gelu": aten.gelu.default,
    "silu": aten.silu.default,
    "tanh": aten.tanh.default,
}
SLOTS = ("adapter_down", "adapter_down_bias", "adapter_up", "adapter_up_bias")


def bottleneck_width(site: Site, options: dict[str, Any]) -> int:
    """``bottleneck_size`` if set, else d // ``reduction_factor`` (at least 1)."""
    if options["bottleneck_size"]:
        return options["bottleneck_size"]
    return max(1, site.out_features // options["reduction_factor"])


class Bottleneck(Method):
    name = "bottleneck"
    site_ops = ("linear",)
    mergeable = False
    wrong_op = "bottleneck adapters attach to linear sites (block outputs), not {op}"
    options: ClassVar[dict[str, Option]] = {
        "reduction_factor": Option(int, 16, "bottleneck = d // reduction_factor", check=positive),
        "bottleneck_size": Option(
            int, 0, "bottleneck width (0: use reduction_factor)", check=lambda v: None if v >= 0 else "must be >= 0"
        ),
        "non_linearity": Option(str, "relu", "activation between down and up", choices=tuple(ACTIVATIONS)),
        "scaling": Option((int, float), 1.0, "factor on the adapter's output"),
        "input_of": Option(
            str,
            "",
            "parallel adapter: read the input of this block (a module name near the site, "
            "e.g. 'mlp'); empty: sequential, read the site's own output",
        ),
    }

    def create(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        weight = model.get_parameter(site.weight_fqn)
        d, width = site.out_features, bottleneck_width(site, options)
        kwargs: dict[str, Any] = {"device": weight.device, "dtype": adapter_dtype(weight)}
        down, up = torch.empty(width, d, **kwargs), torch.zeros(d, width, **kwargs)
        if weight.device.type != "meta":
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        tensors = (down, torch.zeros(width, **kwargs), up, torch.zeros(d, **kwargs))
        host = container(store, site.host)
        for name, tensor in zip(SLOTS, tensors, strict=True):
            adapter_slot(host, name, nn.ParameterDict, create=True)[adapter] = nn.Parameter(tensor)

    def rewrite(self, edit: SiteEditor) -> None:
        options = edit.options
        h = edit.output
        source = block_input(edit.gm, edit.site, options["input_of"]) if options["input_of"] else h
        down_w, down_b, up_w, up_b = (edit.param(slot) for slot in SLOTS)
        down = edit.call(aten.linear.default, source, down_w, down_b, role="adapter_down")
        act = edit.call(ACTIVATIONS[options["non_linearity"]], down, role="adapter_act")
        up = edit.call(aten.linear.default, act, up_w, up_b, role="adapter_up")
        delta = edit.call(aten.mul.Tensor, up, float(options["scaling"]), role="adapter_scale")
        if source is not h and edit.site.transposed:
            # GPT-2 Conv1D sites compute on (batch·seq, d); the block input is (batch, seq, d).
            delta = edit.call(aten.reshape.default, delta, [-1, edit.site.out_features], role="adapter_flat")
        out = edit.call(aten.add.Tensor, h, delta, role="adapter_add")
        edit.redirect(out)

    def state(self, site: Site, store: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
        host = container(store, site.host, create=False)
        return {name: adapter_slot(host, name, nn.ParameterDict)[adapter] for name in SLOTS}

    def load_state(self, site: Site, store: nn.Module, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for slot, param in self.state(site, store, adapter).items():
                param.copy_(tensors[slot])


def block_input(gm: fx.GraphModule, site: Site, name: str) -> fx.Node:
    """The tensor entering the module ``name`` nearest to the site (``mlp`` for ``...mlp.down_proj``).

    The module is the first ``<ancestor of site.fqn>.<name>`` that emits nodes; its input is the
    first operand of its first node that comes from outside it.
    """
    parts = site.fqn.split(".")
    stacks = [(n, {path for path, _ in n.meta.get("nn_module_stack", {}).values()}) for n in gm.graph.nodes]
    for depth in range(len(parts), -1, -1):
        block = ".".join([*parts[:depth], name])
        for node, paths in stacks:
            if block not in paths or node.op != "call_function":
                continue
            for arg in node.all_input_nodes:
                if arg.op != "get_attr" and block not in {p for p, _ in arg.meta.get("nn_module_stack", {}).values()}:
                    return arg
    raise TraceError(
        f"parallel bottleneck at {site.key}: no module named {name!r} next to {site.fqn} emits graph nodes; "
        "set input_of to the name of the block whose input the adapter should read (e.g. 'mlp')"
    )


register_method(Bottleneck())
