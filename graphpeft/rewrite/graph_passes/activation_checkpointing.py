"""Activation checkpointing as a graph pass: recompute each transformer block in backward.

The rewritten graph's nodes carry ``nn_module_stack``; a node belongs to the block named by
the shortest prefix of its innermost module path that ends in a list index
(``model.layers.3.self_attn.q_proj`` -> ``model.layers.3``). Each contiguous run of one
block's nodes is outlined into a GraphModule and called through
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, so only the run's inputs
are kept for backward and its activations are recomputed there.
"""

from __future__ import annotations

import operator
import re
from typing import Any

from torch import fx, nn
from torch.utils.checkpoint import checkpoint

REGION_PREFIX = "graphpeft_checkpointed_"
_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


class CheckpointedRegion(nn.Module):
    """Runs ``region`` (a GraphModule of one block's nodes) under non-reentrant checkpointing."""

    def __init__(self, region: fx.GraphModule):
        super().__init__()
        self.region = region

    def forward(self, *args: Any) -> Any:
        return checkpoint(self.region, *args, use_reentrant=False)


def block_of(node: fx.Node) -> str | None:
    """The block (``model.layers.3``) a node was computed in, or None outside any indexed block."""
    stack = node.meta.get("nn_module_stack")
    if node.op != "call_function" or not stack:
        return None
    path = list(stack.values())[-1][0]
    found = _BLOCK.match(path)
    return found.group(1) if found else None


def block_regions(gm: fx.GraphModule) -> list[tuple[str, list[fx.Node]]]:
    """Contiguous runs of nodes of one block, in graph order (``get_attr`` nodes neither join nor break a run)."""
    runs: list[tuple[str, list[fx.Node]]] = []
    current: tuple[str, list[fx.Node]] | None = None
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            continue
        block = block_of(node)
        if block is None:
            current = None
            continue
        if current is None or current[0] != block:
            current = (block, [])
            runs.append(current)
        current[1].append(node)
    return runs


def checkpoint_blocks(gm: fx.GraphModule) -> fx.GraphModule:
    """Outline every block region of ``gm`` into a checkpointed submodule; returns ``gm`` recompiled."""
    for index, (block, nodes) in enumerate(block_regions(gm)):
        _outline(gm, nodes, f"{REGION_PREFIX}{index}_{block.replace('.', '_')}")
    gm.graph.lint()
    gm.recompile()
    return gm


def _outline(gm: fx.GraphModule, nodes: list[fx.Node], name: str) -> None:
    """Replace ``nodes`` by one ``call_module`` to a checkpointed GraphModule computing them.

    Inputs: the values the run reads from outside (activations, parameters, symbolic sizes);
    outputs: the run's values read outside it, returned as a tuple and unpacked by ``getitem``.
    """
    inside = set(nodes)
    inputs: dict[fx.Node, None] = {}
    for node in nodes:
        for arg in node.all_input_nodes:
            if arg not in inside:
                inputs[arg] = None
    outputs = [n for n in nodes if any(user not in inside for user in n.users)]
    if not outputs:
        return
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for value in inputs:
        env[value] = graph.placeholder(value.name)
        env[value].meta = dict(value.meta)
    for node in nodes:
        env[node] = graph.node_copy(node, lambda arg: env[arg])
    graph.output(tuple(env[n] for n in outputs))
    gm.add_submodule(name, CheckpointedRegion(fx.GraphModule(nn.Module(), graph)))
    with gm.graph.inserting_after(nodes[-1]):
        call = gm.graph.call_module(name, tuple(inputs))
    cursor = call
    for position, value in enumerate(outputs):
        with gm.graph.inserting_after(cursor):
            cursor = gm.graph.call_function(operator.getitem, (call, position))
        cursor.meta = dict(value.meta)
        value.replace_all_uses_with(cursor, delete_user_cb=lambda user: user not in inside)
    for node in reversed(nodes):
        gm.graph.erase_node(node)


def is_checkpointed(gm: fx.GraphModule) -> bool:
    """Whether ``gm`` runs any block under checkpointing."""
    return any(isinstance(m, CheckpointedRegion) for m in gm.modules())


__all__ = ["CheckpointedRegion", "block_of", "block_regions", "checkpoint_blocks", "is_checkpointed"]
