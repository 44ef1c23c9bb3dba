"""GraphModule tools every stage uses: copy a graph (sharing its tensors), drop export's check nodes, read the
path of a ``get_attr`` node, reach (or create) a submodule by its dotted path, and an adapter slot of one."""

from __future__ import annotations

import copy
import warnings
from typing import Any, TypeVar

import torch
from torch import fx, nn


def clone_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule with a copy of ``gm``'s graph and the same parameter tensors.

    Rewrites work on clones, so one export per call signature serves every adapter set.
    """
    graph = fx.Graph()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree spec deprecation noise from deepcopy
        graph._codegen = copy.deepcopy(gm.graph._codegen)
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    return fx.GraphModule(gm, graph)


DTYPE_CHECKS = (torch.ops.aten._assert_tensor_metadata.default,)
RUNTIME_CHECKS = (*DTYPE_CHECKS, torch.ops.aten._assert_scalar.default)


def drop_checks(gm: fx.GraphModule, ops: tuple[Any, ...] = DTYPE_CHECKS) -> None:
    """Remove export's assert nodes of ``ops`` (and size arithmetic that only fed them) from ``gm``.

    ``_assert_tensor_metadata`` re-checks, on every call, the dtype of intermediate tensors, which
    the graph's key (input dtypes, train/eval, device) already fixes; on a small model each node is a
    measurable share of a call. ``_assert_scalar`` checks relations between sizes and stays unless the
    caller guarantees them (generate() does).
    """
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in ops:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def attr_path(node: fx.Node) -> str:
    """The dotted path a ``get_attr`` node reads (fx types every node target as ``str | Callable``)."""
    if not isinstance(node.target, str):
        raise TypeError(f"node {node.name} ({node.op}) reads no attribute path")
    return node.target


def container(root: nn.Module, path: str, create: bool = True) -> nn.Module:
    """The module at ``path`` under ``root``, creating empty modules along the way."""
    module = root
    for part in [p for p in path.split(".") if p]:
        child = module._modules.get(part)
        if child is None:
            if not create:
                raise AttributeError(path)
            child = nn.Module()
            module.register_module(part, child)
        module = child
    return module


SlotDict = TypeVar("SlotDict", nn.ParameterDict, nn.ModuleDict)


def adapter_slot(host: nn.Module, name: str, kind: type[SlotDict], create: bool = False) -> SlotDict:
    """``host``'s adapter slot ``name``: a ``kind`` keyed by adapter name (``lora_A``: a ParameterDict).

    ``create`` registers an empty one first when ``host`` has none; otherwise a missing slot is a KeyError.
    """
    if create and name not in host._modules:
        host.register_module(name, kind())
    found = host._modules[name]
    if not isinstance(found, kind):
        raise TypeError(f"slot {name} holds a {type(found).__name__}, not a {kind.__name__}")
    return found
