"""Call an exported GraphModule with flat tensor lists, for loops that call one graph many times.

``ep.module()`` graphs flatten their kwargs with pytree, call a guard function, look each
parameter up through the module tree (``getattr(self.model.layers, "0").self_attn.q_proj.weight``)
and rebuild the output objects (a ``ModelOutput``, a cache) on every call. For a decode step of a
small model that Python work costs as much as the arithmetic. :class:`FlatGraph` copies the graph
once with every ``get_attr`` turned into an argument bound to the same tensor objects (so
in-place merges and optimizer steps stay visible), without the guard call, returning the flat
outputs grouped by output name.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

_FLAT = "graphpeft.flat"


class FlatGraph:
    """``gm`` as ``flat(**inputs) -> {output name: [tensors]}``.

    Every input is given by name, as the exported graph takes it; a pytree input (a cache)
    is given as the list of its leaves in pytree order, and comes back the same way.
    """

    def __init__(self, gm: fx.GraphModule):
        kwargs_spec = gm._in_spec.child(1)
        self.inputs = list(zip(kwargs_spec.context, (c.num_leaves for c in kwargs_spec.children()), strict=True))
        self.outputs: dict[str, slice] = {}
        start = 0
        out_spec = gm._out_spec
        assert out_spec is not None  # an exported graph always records its output structure
        for name, child in zip(out_spec.context, out_spec.children(), strict=True):
            self.outputs[name] = slice(start, start + child.num_leaves)
            start += child.num_leaves
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        self.bound: list[Any] = []
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                env[node] = graph.placeholder(node.name)
                self.bound.append(_fetch(gm, str(node.target)))
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = graph.placeholder(node.name)
        for node in gm.graph.nodes:
            if node.op in ("get_attr", "placeholder") or (node.op == "call_module" and node.target == "_guards_fn"):
                continue
            if node.op == "output":
                graph.output(fx.map_arg(node.args[0], lambda n: env[n]))
                continue
            env[node] = graph.node_copy(node, lambda n: env[n])
        self.module = fx.GraphModule(nn.Module(), graph)

    def __call__(self, **inputs: Any) -> dict[str, list[Any]]:
        args = list(self.bound)
        for name, count in self.inputs:
            value = inputs[name]
            if count == 1 and not isinstance(value, (list, tuple)):
                args.append(value)
            elif len(value) != count:
                raise ValueError(f"input {name!r} has {len(value)} tensors; the graph was exported with {count}")
            else:
                args.extend(value)
        flat = self.module(*args)
        return {name: list(flat[part]) for name, part in self.outputs.items()}


def flat_graph(gm: fx.GraphModule) -> FlatGraph:
    """The :class:`FlatGraph` of ``gm``, built once and kept in ``gm.meta``."""
    if _FLAT not in gm.meta:
        gm.meta[_FLAT] = FlatGraph(gm)
    return gm.meta[_FLAT]


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    owner: Any = gm
    for part in target.split("."):
        owner = getattr(owner, part)
    return owner
