"""Weight operands that are views of a parameter.

Functional code often hands an op not the parameter itself but a view of it:
``nn.MultiheadAttention`` splits ``in_proj_weight`` for cross-attention, MoE
experts transpose a 3-D ``(experts, out, in)`` stack for a grouped mm. A
*view chain* records the ops from the parameter to the operand
(``(("aten.transpose.int", (-2, -1)),)``); replaying it on the parameter gives
a tensor sharing the parameter's storage, which is how a delta computed in the
operand's layout is merged into the parameter.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from ..tracing.graph_utils import attr_path

aten = torch.ops.aten

ViewChain = tuple[tuple[str, tuple[Any, ...]], ...]

_VIEW_OPS = {
    aten.t.default,
    aten.transpose.int,
    aten.permute.default,
    aten.select.int,
    aten.slice.Tensor,
    aten.view.default,
    aten.reshape.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.alias.default,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.chunk.default,
    aten.unbind.int,
}
_GETITEM = "getitem"


def param_of(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The FQN of the parameter a ``get_attr`` node reads, or None."""
    if node.op != "get_attr":
        return None
    target = attr_path(node)
    try:
        gm.get_parameter(target)
    except AttributeError:
        return None
    return target


def trace_view(gm: fx.GraphModule, arg: Any) -> tuple[str, ViewChain] | None:
    """``(parameter FQN, view chain)`` if ``arg`` is a parameter or a chain of views of one."""
    steps: list[tuple[str, tuple[Any, ...]]] = []
    while isinstance(arg, fx.Node):
        if arg.op == "get_attr":
            fqn = param_of(gm, arg)
            return (fqn, tuple(reversed(steps))) if fqn is not None else None
        if arg.op != "call_function" or arg.kwargs:
            return None
        rest = tuple(_constant(a) for a in arg.args[1:])
        if any(a is _NOT_CONSTANT for a in rest):
            return None
        if arg.target is operator.getitem:
            steps.append((_GETITEM, rest))
        elif arg.target in _VIEW_OPS:
            steps.append((str(arg.target), rest))
        else:
            return None
        arg = arg.args[0]
    return None


_NOT_CONSTANT = object()


def _constant(value: Any) -> Any:
    """``value`` as a hashable constant (lists become tuples), or ``_NOT_CONSTANT``."""
    if isinstance(value, (list, tuple)):
        items = tuple(_constant(v) for v in value)
        return _NOT_CONSTANT if any(v is _NOT_CONSTANT for v in items) else items
    if isinstance(value, bool) or value is None or type(value) in (int, float):
        return value
    return _NOT_CONSTANT


def replay(tensor: torch.Tensor, chain: ViewChain) -> torch.Tensor:
    """Apply a view chain to ``tensor`` (the parameter) eagerly: the operand the op reads."""
    for name, args in chain:
        if name == _GETITEM:
            tensor = tensor[args[0]]
        else:
            namespace, op, overload = name.split(".")
            tensor = getattr(getattr(getattr(torch.ops, namespace), op), overload)(tensor, *args)
    return tensor


def shares_storage(view: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether writing into ``view`` writes into ``base``."""
    return view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
