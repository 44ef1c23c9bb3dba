"""Sites: the places in an exported graph an adapter can attach to.

A site is named by the innermost module FQN in ``node.meta["nn_module_stack"]``,
its op kind and an occurrence index (when a module calls the op more than once),
never by FX node names, which change on every export. The same model traced with
other kwargs, in train or eval mode, yields the same site keys.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import fx, nn

aten = torch.ops.aten

# op kind -> (aten overloads, index of the weight operand)
_WEIGHT_OPS = {
    aten.linear.default: ("linear", 1),
    aten.addmm.default: ("linear", 2),  # GPT-2 Conv1D: addmm(bias, x2d, W[in, out])
    aten.embedding.default: ("embedding", 0),
    aten.conv2d.default: ("conv2d", 1),
}
_ATTENTION_OPS = (aten.scaled_dot_product_attention.default,)


@dataclass(frozen=True)
class Site:
    """One adaptable place in the graph.

    Attributes:
        fqn: innermost module FQN (``model.layers.0.self_attn.q_proj``); ``""`` for the root.
        op: ``linear`` | ``embedding`` | ``conv2d`` | ``attention`` | ``module``.
        occurrence: index among the sites with the same ``fqn`` and ``op``, in graph order.
        cls: the module's class path (``torch.nn.modules.linear.Linear``).
        weight: FQN of the weight parameter the op reads, if any.
        weight_shape: its shape: (out, in) for linear, (in, out) for Conv1D,
            (vocab, dim) for embedding, (out, in, kh, kw) for conv2d.
        transposed: True for Conv1D (``addmm`` with a weight stored as (in, out)).
        bias: FQN of the bias parameter, if the op adds one.
    """

    fqn: str
    op: str
    occurrence: int = 0
    cls: str = ""
    weight: str | None = None
    weight_shape: tuple[int, ...] | None = None
    transposed: bool = False
    bias: str | None = None

    @property
    def key(self) -> str:
        """Stable identifier: ``fqn:op`` plus ``#n`` for repeated calls."""
        base = f"{self.fqn}:{self.op}"
        return base if self.occurrence == 0 else f"{base}#{self.occurrence}"

    @property
    def in_features(self) -> int:
        assert self.weight_shape is not None
        if self.op == "embedding":
            return self.weight_shape[0]
        return self.weight_shape[0] if self.transposed else self.weight_shape[1]

    @property
    def out_features(self) -> int:
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
    if not isinstance(arg, fx.Node) or arg.op != "get_attr":
        return None
    try:
        gm.get_parameter(arg.target)
    except AttributeError:
        return None
    return str(arg.target)


def graph_sites(gm: fx.GraphModule) -> list[tuple[Site, fx.Node]]:
    """Every op site in ``gm`` with the node that computes it, in graph order."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _WEIGHT_OPS:
            op, index = _WEIGHT_OPS[node.target]
            weight = _param_target(gm, node.args[index]) if len(node.args) > index else None
            if weight is None:
                continue
            transposed = node.target is aten.addmm.default
            if transposed and gm.get_parameter(weight).dim() != 2:
                continue
            bias = None
            if node.target is aten.addmm.default:
                bias = _param_target(gm, node.args[0])
            elif op in ("linear", "conv2d") and len(node.args) > 2:
                bias = _param_target(gm, node.args[2])
            shape = tuple(gm.get_parameter(weight).shape)
        elif node.target in _ATTENTION_OPS:
            op, weight, shape, transposed, bias = "attention", None, None, False, None
        else:
            continue
        fqn, cls = innermost_module(node)
        occurrence = counts[(fqn, op)]
        counts[(fqn, op)] += 1
        site = Site(fqn, op, occurrence, cls, weight, shape, transposed, bias)
        found.append((site, node))
    return found


def module_sites(model: nn.Module) -> list[Site]:
    """One ``module`` site per submodule that owns parameters (for the ``train`` method)."""
    out = []
    for fqn, module in model.named_modules():
        if fqn and any(True for _ in module.parameters()):
            cls = f"{type(module).__module__}.{type(module).__qualname__}"
            out.append(Site(fqn, "module", 0, cls))
    return out
