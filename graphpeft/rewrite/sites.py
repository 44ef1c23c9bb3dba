"""Sites: the places in an exported graph an adapter can attach to.

A site is named by the innermost module FQN in ``node.meta["nn_module_stack"]``,
its op kind and an occurrence index (when a module calls the op more than once),
never by FX node names, which change on every export. The same model traced with
other kwargs, in train or eval mode, yields the same site keys.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

import torch
from torch import fx, nn

from .param_views import ViewChain, param_of, replay, trace_view

aten = torch.ops.aten

# op kind -> (aten overloads, index of the weight operand)
_WEIGHT_OPS = {
    aten.linear.default: ("linear", 1),
    aten.addmm.default: ("linear", 2),  # GPT-2 Conv1D: addmm(bias, x2d, W[in, out])
    aten.embedding.default: ("embedding", 0),
    aten.conv2d.default: ("conv2d", 1),
}
_ATTENTION_OPS = (aten.scaled_dot_product_attention.default,)

# Parameter sites: ops computing ``x @ W`` whose weight operand W is a parameter or a view of one,
# where the legacy kinds above do not apply. target -> (input index, weight index, W is (..., in, out)).
_MATMUL_OPS = {
    aten.linear.default: (0, 1, False),
    aten.addmm.default: (1, 2, True),
    aten.mm.default: (0, 1, True),
    aten.matmul.default: (0, 1, True),
    aten.bmm.default: (0, 1, True),
}
# Grouped mm (MoE experts): (tokens, in) x (experts, in, out) with offsets; matched by name because
# transformers' CPU fallback op exists only once transformers registered it.
_GROUPED_MM_OPS = ("aten._grouped_mm.default", "transformers.grouped_mm_fallback.default")
PARAM_SITE_OPS = ("matmul", "grouped_mm")


@dataclass(frozen=True)
class Site:
    """One adaptable place in the graph.

    Attributes:
        fqn: innermost module FQN (``model.layers.0.self_attn.q_proj``); ``""`` for the root.
        op: ``linear`` | ``embedding`` | ``conv2d`` | ``attention`` | ``module``, or a parameter
            site: ``matmul`` (``x @ W`` through linear/addmm/mm/matmul/bmm where W is a view
            of a parameter, or mm/matmul/bmm on the parameter itself) | ``grouped_mm``.
        occurrence: index among the sites with the same ``fqn`` and ``op``, in graph order.
        cls: the module's class path (``torch.nn.modules.linear.Linear``).
        weight: FQN of the weight parameter the op reads, if any.
        weight_shape: its shape: (out, in) for linear, (in, out) for Conv1D,
            (vocab, dim) for embedding, (out, in, kh, kw) for conv2d.
        transposed: True for Conv1D (``addmm`` with a weight stored as (in, out)).
        bias: FQN of the bias parameter, if the op adds one.
        view: parameter sites: the view chain from the parameter to the weight operand.
        operand_shape: parameter sites: shape of the weight operand, (out, in) when not
            ``transposed``, else (..., in, out) (grouped mm / bmm: (experts, in, out)).
        adapter_path: where adapters of this site live when not under ``fqn`` (see ``host``).
    """

    fqn: str
    op: str
    occurrence: int = 0
    cls: str = ""
    weight: str | None = None
    weight_shape: tuple[int, ...] | None = None
    transposed: bool = False
    bias: str | None = None
    view: ViewChain = ()
    operand_shape: tuple[int, ...] | None = None
    adapter_path: str = ""

    @property
    def host(self) -> str:
        """Path of this site's adapters in the adapter tree: the module FQN, or, when a module
        holds several weight sites, one path per parameter use (``attn.out_proj``,
        ``mlp.experts.gate_up_proj``)."""
        return self.adapter_path or self.fqn

    @property
    def weight_fqn(self) -> str:
        """FQN of the weight parameter, for a site whose op reads one (every site but attention and module)."""
        assert self.weight is not None
        return self.weight

    @property
    def experts(self) -> int:
        """Number of stacked weights (experts) a 3-D operand holds; 0 for a plain matrix."""
        shape = self.operand_shape
        return shape[0] if shape is not None and len(shape) == 3 else 0

    @property
    def key(self) -> str:
        """Stable identifier: ``fqn:op`` plus ``#n`` for repeated calls."""
        base = f"{self.fqn}:{self.op}"
        return base if self.occurrence == 0 else f"{base}#{self.occurrence}"

    @property
    def in_features(self) -> int:
        if self.operand_shape is not None:
            return self.operand_shape[-2] if self.transposed else self.operand_shape[-1]
        assert self.weight_shape is not None
        if self.op == "embedding":
            return self.weight_shape[0]
        return self.weight_shape[0] if self.transposed else self.weight_shape[1]

    @property
    def out_features(self) -> int:
        if self.operand_shape is not None:
            return self.operand_shape[-1] if self.transposed else self.operand_shape[-2]
        assert self.weight_shape is not None
        if self.op == "embedding":
            return self.weight_shape[1]
        return self.weight_shape[1] if self.transposed else self.weight_shape[0]


def innermost_module(node: fx.Node) -> tuple[str, str]:
    """``(fqn, class path)`` of the innermost module that emitted ``node``; ``("", "")`` if none."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    if not isinstance(cls, str):
        cls = f"{cls.__module__}.{cls.__qualname__}"
    return path, cls


def _param_target(gm: fx.GraphModule, arg: object) -> str | None:
    """The FQN of the parameter an op operand reads, or None."""
    return param_of(gm, arg) if isinstance(arg, fx.Node) else None


def graph_sites(gm: fx.GraphModule) -> list[tuple[Site, fx.Node]]:
    """Every op site in ``gm`` with the node that computes it, in graph order."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        fields = _weight_site(gm, node) or _param_site(gm, node)
        if fields is None:
            continue
        fqn, cls = innermost_module(node)
        op = fields[0]
        occurrence = counts[(fqn, op)]
        counts[(fqn, op)] += 1
        site = Site(fqn, op, occurrence, cls, *fields[1:])
        found.append((site, node))
    return _with_hosts(found)


def _weight_site(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    """``(op, weight, shape, transposed, bias)`` of a linear/embedding/conv2d/attention site."""
    if node.target in _WEIGHT_OPS:
        op, index = _WEIGHT_OPS[node.target]
        weight = _param_target(gm, node.args[index]) if len(node.args) > index else None
        if weight is None:
            return None
        transposed = node.target is aten.addmm.default
        if transposed and gm.get_parameter(weight).dim() != 2:
            return None
        bias = None
        if node.target is aten.addmm.default:
            bias = _param_target(gm, node.args[0])
        elif op in ("linear", "conv2d") and len(node.args) > 2:
            bias = _param_target(gm, node.args[2])
        shape = tuple(gm.get_parameter(weight).shape)
        return op, weight, shape, transposed, bias
    if node.target in _ATTENTION_OPS:
        return "attention", None, None, False, None
    return None


def _param_site(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    """``(op, weight, shape, transposed, bias, view, operand_shape)`` of a parameter site."""
    if node.target in _MATMUL_OPS:
        op = "matmul"
        _, index, transposed = _MATMUL_OPS[node.target]
        rank = 3 if node.target is aten.bmm.default else 2
    elif str(node.target) in _GROUPED_MM_OPS:
        op, index, transposed, rank = "grouped_mm", 1, True, 3
    else:
        return None
    if len(node.args) <= index:
        return None
    traced = trace_view(gm, node.args[index])
    if traced is None:
        return None
    weight, view = traced
    param = gm.get_parameter(weight)
    with torch.no_grad():
        operand = replay(param, view)
    if operand.dim() != rank:
        return None
    return op, weight, tuple(param.shape), transposed, None, view, tuple(operand.shape)


def input_index(node: fx.Node) -> int:
    """Position of the activation ``x`` in an ``x @ W`` site node's args (linear, addmm, mm, matmul,
    bmm, grouped mm; conv2d: 0)."""
    return _MATMUL_OPS[node.target][0] if node.target in _MATMUL_OPS else 0


def input_operand(node: fx.Node) -> fx.Node:
    """The activation ``x`` of an ``x @ W`` site node."""
    operand = node.args[input_index(node)]
    assert isinstance(operand, fx.Node)
    return operand


_LEGACY_WEIGHT_OPS = ("linear", "embedding", "conv2d")


def _with_hosts(found: list[tuple[Site, fx.Node]]) -> list[tuple[Site, fx.Node]]:
    """Give parameter sites, and weight sites sharing a module, one adapter path per parameter use.

    A module whose only weight site is a linear/embedding/conv2d site keeps its adapters under
    its own FQN (PEFT's layout); otherwise the path is the parameter FQN without a trailing ``.weight``,
    with ``_<n>`` appended for the n-th further site reading the same parameter.
    """
    per_module: dict[str, int] = defaultdict(int)
    for site, _ in found:
        if site.weight is not None:
            per_module[site.fqn] += 1
    uses: dict[str, int] = defaultdict(int)
    out = []
    for site, node in found:
        shared = site.op in _LEGACY_WEIGHT_OPS and per_module[site.fqn] > 1
        if site.op in PARAM_SITE_OPS or shared:
            path = site.weight_fqn.removesuffix(".weight")
            n = uses[path]
            uses[path] += 1
            out.append((replace(site, adapter_path=path if n == 0 else f"{path}_{n}"), node))
        else:
            out.append((site, node))
    return out


def module_sites(model: nn.Module) -> list[Site]:
    """One ``module`` site per submodule that owns parameters (for the ``train`` method)."""
    out = []
    for fqn, module in model.named_modules():
        if fqn and any(True for _ in module.parameters()):
            cls = f"{type(module).__module__}.{type(module).__qualname__}"
            out.append(Site(fqn, "module", 0, cls))
    return out
