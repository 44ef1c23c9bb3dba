"""Block stamping: grow a graph traced with the first few blocks of a block list to the whole list.

:func:`stamp_blocks` copies the last traced block's nodes once per missing block ``j``: parameter reads
``layers.2.x`` become ``layers.j.x`` (block ``j``'s own tensors, registered on the GraphModule as a full
export registers them: shared, never copied); inputs the last block took from the block before it come from
the previous copy; inputs from outside any block (masks, rotary tables, symbolic sizes) stay;
``nn_module_stack`` names block ``j``; whatever read the last traced block after the list reads the last copy.

The copy is trusted only when the traced graph proves the recurrence (:func:`_recurrent`): block 2 must equal
block 1 modulo the block index (same ops, constants, module paths and shapes), read block 1 where block 1 reads
block 0, and read nothing else that differs per block (a per-layer cache input, a per-layer constant); no block
but the last may be read after the list (per-layer outputs such as hidden-state tuples or caches).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .graph_utils import attr_path, container

REUSED = "graphpeft.reused_blocks"  # GraphModule.meta of a stamped export: (list fqn, traced blocks, all blocks)


@dataclass(frozen=True)
class Blocks:
    """The block list ``fqn`` (``model.layers``), its blocks, and how many of them the graph traced (>= 3)."""

    fqn: str
    modules: nn.ModuleList
    traced: int

    def path(self, index: int) -> str:
        return f"{self.fqn}.{index}"


def stamp_blocks(gm: fx.GraphModule, blocks: Blocks) -> fx.GraphModule | None:
    """``gm`` (exported with the first ``blocks.traced`` blocks) grown to every block, or None if the
    traced blocks do not prove that copying the last one is exact."""
    stamp = _Stamp.verified(gm, blocks) if blocks.traced >= 3 else None
    if stamp is None:
        return None
    try:
        stamp.expand()
        gm.graph.lint()
        gm.recompile()
    except Exception:  # noqa: BLE001 - e.g. a block reads a tensor constant of its own: not ours to copy
        return None
    gm.meta[REUSED] = (blocks.fqn, blocks.traced, len(blocks.modules))
    return gm


class _Stamp:
    """The traced blocks of one graph, checked to form a recurrence; :meth:`expand` copies the last one."""

    def __init__(self, gm: fx.GraphModule, blocks: Blocks, traced: list[list[fx.Node]], owner: dict[fx.Node, int]):
        self.gm, self.blocks, self.traced, self.owner = gm, blocks, traced, owner
        self.position = {node: i for i, node in enumerate(traced[-2])}  # previous block's node -> index

    @classmethod
    def verified(cls, gm: fx.GraphModule, blocks: Blocks) -> _Stamp | None:
        parts = _partition(gm, blocks)
        if parts is None:
            return None
        traced, owner = parts
        if not all(traced) or not _recurrent(traced, blocks):
            return None
        order = {node: i for i, node in enumerate(gm.graph.nodes)}
        end = max(order[node] for node in traced[-1])
        for index, block in enumerate(traced):
            for node in block:
                for user in node.users:
                    if user in owner:
                        continue
                    if index < len(traced) - 1:
                        return None  # a per-layer output (hidden-state tuples, caches)
                    if order[user] < end:
                        return None  # read from outside before the last block has finished
        return cls(gm, blocks, traced, owner)

    def expand(self) -> None:
        """Insert copies of the last traced block for every missing block and rewire its readers."""
        graph, template = self.gm.graph, self.traced[-1]
        attr_anchor = next((n for n in reversed(template) if n.op == "get_attr"), None)
        call_anchor = next(n for n in reversed(template) if n.op != "get_attr")
        source = self.blocks.path(self.blocks.traced - 1)
        previous = {node: node for node in template}
        created: set[fx.Node] = set()
        for index in range(self.blocks.traced, len(self.blocks.modules)):
            self._register_tensors(index)
            rename = _Renamer(source, self.blocks.path(index))
            copies: dict[fx.Node, fx.Node] = {}

            def lookup(
                arg: fx.Node, copies: dict[fx.Node, fx.Node] = copies, previous: dict[fx.Node, fx.Node] = previous
            ) -> fx.Node:
                if arg in copies:
                    return copies[arg]
                if arg in self.position:  # the block before: its copy
                    return previous[template[self.position[arg]]]
                return arg

            for node in template:
                if node.op == "get_attr":
                    with graph.inserting_after(attr_anchor):
                        new = graph.get_attr(rename.path(attr_path(node)))
                    attr_anchor = new
                else:
                    with graph.inserting_after(call_anchor):
                        new = graph.create_node(
                            node.op,
                            node.target,
                            fx.map_arg(node.args, lookup),
                            fx.map_arg(node.kwargs, lookup),
                            name=node.name,
                            type_expr=node.type,
                        )
                    call_anchor = new
                new.meta = dict(node.meta)
                if "nn_module_stack" in node.meta:
                    new.meta["nn_module_stack"] = rename.stack(node.meta["nn_module_stack"])
                copies[node] = new
                created.add(new)
            previous = copies
        for node in template:
            for user in list(node.users):
                if user not in created and user not in self.owner:
                    user.replace_input_with(node, previous[node])

    def _register_tensors(self, index: int) -> None:
        """Put block ``index``'s own parameters and buffers on the GraphModule, laid out like the traced one's."""
        traced = container(self.gm, self.blocks.path(self.blocks.traced - 1), create=False)
        block = self.blocks.modules[index]
        for name, module in traced.named_modules():
            target = container(self.gm, ".".join(p for p in (self.blocks.path(index), name) if p))
            for field in module._parameters:
                target.register_parameter(field, block.get_parameter(f"{name}.{field}" if name else field))
            for field in module._buffers:
                persistent = field not in module._non_persistent_buffers_set
                target.register_buffer(
                    field, block.get_buffer(f"{name}.{field}" if name else field), persistent=persistent
                )


def _partition(gm: fx.GraphModule, blocks: Blocks) -> tuple[list[list[fx.Node]], dict[fx.Node, int]] | None:
    """Each traced block's nodes in graph order (its computations and its parameter reads), and node -> block."""
    exact = re.compile(re.escape(blocks.fqn) + r"\.(\d+)")
    under = re.compile(re.escape(blocks.fqn) + r"\.(\d+)\.")
    traced: list[list[fx.Node]] = [[] for _ in range(blocks.traced)]
    owner: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        index = None
        if node.op == "get_attr":
            match = under.match(str(node.target))
            index = int(match.group(1)) if match else None
        elif node.op == "call_function":  # (export's ``_guards_fn`` call may carry a block's stack: not in it)
            for path, _ in (node.meta.get("nn_module_stack") or {}).values():
                match = exact.fullmatch(path)
                if match:
                    index = int(match.group(1))
                    break
        if index is None:
            continue
        if index >= blocks.traced:
            return None
        traced[index].append(node)
        owner[node] = index
    return traced, owner


def _recurrent(traced: list[list[fx.Node]], blocks: Blocks) -> bool:
    """Whether the last traced block is the one before it with the block index advanced by one.

    Node by node: same op and target (parameter paths renamed), same module path and class, same shapes,
    same constants; an input inside the block is the same position of the block; an input from the block
    before is at the position the previous block's input at that place has in block 0 (block 0 aligned
    to block 1, see :func:`_align`); any other input is the very same node for both (nothing per block
    enters from outside; a value block 0 computed once, such as a symbolic size, is read by every block).
    """
    first, before, last = traced[-3], traced[-2], traced[-1]
    here = _Renamer(blocks.path(blocks.traced - 2), blocks.path(blocks.traced - 1))
    if len(before) != len(last) or any(_key(a, here) != _key(b, None) for a, b in zip(before, last, strict=True)):
        return False
    chain = _align(first, before, _Renamer(blocks.path(blocks.traced - 3), blocks.path(blocks.traced - 2)))
    if chain is None:
        return False
    rank_before = {node: i for i, node in enumerate(before)}
    rank_last = {node: i for i, node in enumerate(last)}

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, fx.Node) or isinstance(b, fx.Node):
            if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
                return False
            if b in rank_last:
                return rank_before.get(a) == rank_last[b]
            if b in rank_before:
                return chain.get(a) == rank_before[b]
            return a is b  # shared: from outside, or computed once in block 0 (a symbolic size)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, Mapping) or isinstance(b, Mapping):
            return type(a) is type(b) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return type(a) is type(b) and a == b

    return all(same(a.args, b.args) and same(a.kwargs, b.kwargs) for a, b in zip(before, last, strict=True))


def _key(node: fx.Node, rename: _Renamer | None) -> tuple:
    """What a node of one block must share with its counterpart in the next: op, target, module path
    and class, shape and dtype (``rename`` moves ``node``'s paths to the next block)."""
    target = rename.path(attr_path(node)) if rename and node.op == "get_attr" else node.target
    stack = node.meta.get("nn_module_stack") or {}
    if rename:
        stack = rename.stack(stack)
    return node.op, target, tuple(stack.values()), _shape_key(node.meta.get("val"))


def _align(first: list[fx.Node], second: list[fx.Node], rename: _Renamer) -> dict[fx.Node, int] | None:
    """Block 0's nodes -> the position of their counterparts in block 1, or None if block 1 is not block 0
    minus some nodes. Block 0 may hold more: values the tracer computes once and every later block reuses."""
    keys = [_key(node, None) for node in second]
    out: dict[fx.Node, int] = {}
    for node in first:
        if len(out) < len(keys) and _key(node, rename) == keys[len(out)]:
            out[node] = len(out)
    return out if len(out) == len(keys) else None


def _shape_key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape)), value.dtype
    if isinstance(value, (list, tuple)):
        return tuple(_shape_key(v) for v in value)
    return str(value) if value is not None else None


class _Renamer:
    """Renames module paths (and ``nn_module_stack`` entries) under block ``source`` to block ``target``."""

    def __init__(self, source: str, target: str):
        self.source, self.target = source, target
        self._stacks: dict[tuple, dict] = {}

    def path(self, path: str) -> str:
        if path == self.source or path.startswith(f"{self.source}."):
            return self.target + path[len(self.source) :]
        return path

    def stack(self, stack: dict[str, tuple[str, Any]]) -> dict[str, tuple[str, Any]]:
        key = tuple(stack.items())
        renamed = self._stacks.get(key)
        if renamed is None:
            renamed = {}
            for name, (path, cls) in stack.items():
                new_path = self.path(path)
                moved = new_path != path and name.endswith(path)
                renamed[name[: len(name) - len(path)] + new_path if moved else name] = (new_path, cls)
            self._stacks[key] = renamed
        return dict(renamed)
