"""Block reuse: export a deep model with a few of its repeated blocks, then stamp out the rest.

``torch.export`` spends a roughly fixed time per decoder block (about 0.3 s for a 7B Llama layer on the
meta device), tracing the same Python code again and again. When a model holds a long ``nn.ModuleList`` of
identical blocks (``model.layers``), :func:`export_reusing_blocks` exports it with that list cut to its first
``TRACED_BLOCKS`` blocks (``config.num_hidden_layers`` and ``config.layer_types`` cut to match, everything
restored afterwards), then copies the last traced block's nodes once per missing block ``j``:

- parameter reads ``layers.2.x`` become ``layers.j.x``, registered on the GraphModule as block ``j``'s own
  tensors (shared, never copied, as a full export shares them);
- inputs the last block took from the block before it come from the previous copy; inputs from outside any
  block (masks, rotary tables, symbolic sizes) stay;
- ``nn_module_stack`` names block ``j``, so sites, checkpointing and visualization see a full export;
- whatever read the last traced block after the list (final norm, head) reads the last copy.

The copy is trusted only when the traced graph proves the recurrence: block 2 must equal block 1 modulo the
block index (same ops, constants, module paths and shapes), read block 1 exactly where block 1 reads block 0,
and read nothing else that differs per block (a per-layer cache input, a per-layer constant); no block but the
last may be read after the list (per-layer outputs such as hidden-state tuples or caches). If any check fails,
or the cut model does not export, the caller exports the whole model. ``GRAPHPEFT_REUSE_BLOCKS=0`` in the
environment turns reuse off everywhere; ``graphpeft.apply(..., reuse_blocks=False)`` for one model.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .rewrite import container

TRACED_BLOCKS = 3  # block 0 starts the chain; blocks 1 and 2 prove that block j reads block j-1 like 2 reads 1
ENV_SWITCH = "GRAPHPEFT_REUSE_BLOCKS"
REUSED = "graphpeft.reused_blocks"  # GraphModule.meta of a stamped export: (list fqn, traced blocks, all blocks)
_PER_LAYER_OUTPUT_FLAGS = ("use_cache", "output_hidden_states", "output_attentions")


def enabled() -> bool:
    """False when ``GRAPHPEFT_REUSE_BLOCKS`` is ``0``/``false``/``off``/``no``."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


@dataclass(frozen=True)
class BlockList:
    """A ``nn.ModuleList`` of identical blocks: ``fqn`` (``model.layers``), its owner and attribute name."""

    fqn: str
    parent: nn.Module
    attr: str
    blocks: nn.ModuleList

    def path(self, index: int) -> str:
        return f"{self.fqn}.{index}"


def export_reusing_blocks(model: nn.Module, kwargs: Mapping[str, Any], export: Callable[[], fx.GraphModule]) -> fx.GraphModule | None:
    """``export()`` run on ``model`` cut to ``TRACED_BLOCKS`` blocks and stamped back to full depth,
    or None when reuse does not apply (then export the whole model)."""
    if not enabled() or any(kwargs.get(flag) for flag in _PER_LAYER_OUTPUT_FLAGS):
        return None
    if not all(value is None or isinstance(value, (torch.Tensor, bool, int, float, str)) for value in kwargs.values()):
        return None  # cache objects carry per-layer state
    found = find_block_list(model)
    if found is None:
        return None
    try:
        with _truncated(model, found):
            graph = export()
    except Exception:  # the cut model may not export where the whole one does; correctness first
        return None
    return stamp_blocks(graph, found)


# ---------------------------------------------------------------------------------------------- the list


def find_block_list(model: nn.Module) -> BlockList | None:
    """The longest outermost ``nn.ModuleList`` of more than ``TRACED_BLOCKS`` identical blocks, if any.

    Identical: same class, same submodule tree, same parameter and buffer names, shapes, dtypes and
    devices, same plain attributes (except ints that count the block index), no hooks, no tensor shared
    with anything else, and a uniform ``config.layer_types`` when the config lists one type per block.
    """
    shared = _shared_tensors(model)
    found: list[BlockList] = []
    for fqn, module in model.named_modules():
        if not fqn or not isinstance(module, nn.ModuleList) or len(module) <= TRACED_BLOCKS:
            continue
        if any(fqn.startswith(f"{outer.fqn}.") for outer in found):
            continue
        if _uniform(module, shared) and _uniform_layer_types(_config(model, fqn), len(module)):
            parent_fqn, _, attr = fqn.rpartition(".")
            found.append(BlockList(fqn, model.get_submodule(parent_fqn), attr, module))
    return max(found, key=lambda b: len(b.blocks), default=None)


def _shared_tensors(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        seen[id(tensor)] = seen.get(id(tensor), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _uniform(blocks: nn.ModuleList, shared: set[int]) -> bool:
    layouts = [_layout(block, shared) for block in blocks]
    if layouts[0] is None or any(layout != layouts[0] for layout in layouts[1:]):
        return False
    attributes = [_attributes(block) for block in blocks]
    try:
        for key, first in attributes[0].items():
            values = [attrs[key] for attrs in attributes]
            if all(value == first for value in values):
                continue
            if all(type(value) is int and value - index == first for index, value in enumerate(values)):
                continue  # a block counter (layer_idx, layer_number): read by caches, not by a training graph
            return False
    except Exception:  # an attribute that does not compare (an array): not provably identical
        return False
    return True


def _layout(block: nn.Module, shared: set[int]) -> tuple | None:
    """Module tree and tensors that must agree between two blocks; None if the block is unusable."""
    modules = []
    for name, module in block.named_modules():
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks:
            return None
        modules.append((name, type(module), tuple(sorted(module._parameters)), tuple(sorted(module._buffers))))
    tensors = []
    for name, tensor in [*block.named_parameters(remove_duplicate=False), *block.named_buffers(remove_duplicate=False)]:
        if id(tensor) in shared:
            return None
        tensors.append((name, type(tensor), tuple(tensor.shape), tensor.dtype, tensor.device, tensor.requires_grad))
    return tuple(modules), tuple(tensors)


def _attributes(block: nn.Module) -> dict[tuple[str, str], Any]:
    """The plain (non-tensor, non-module) public attributes of every module of a block."""
    return {
        (name, key): _comparable(value)
        for name, module in block.named_modules()
        for key, value in vars(module).items()
        if not key.startswith("_") and key != "training" and not isinstance(value, (torch.Tensor, nn.Module))
    }


def _comparable(value: Any) -> Any:
    """``functools.partial`` compares by identity (each block makes its own ``gelu(approximate=...)``)."""
    if isinstance(value, functools.partial):
        return functools.partial, value.func, value.args, tuple(sorted(value.keywords.items()))
    return value


def _config(model: nn.Module, fqn: str) -> Any:
    """The config nearest to the list (a multimodal model's text config lives on its text model)."""
    parts = fqn.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        config = getattr(model.get_submodule(".".join(parts[:depth])), "config", None)
        if config is not None:
            return config
    return None


def _uniform_layer_types(config: Any, count: int) -> bool:
    types = getattr(config, "layer_types", None)
    if not isinstance(types, (list, tuple)) or len(types) != count:
        return True
    return all(t == types[0] for t in types)


@contextlib.contextmanager
def _truncated(model: nn.Module, found: BlockList) -> Iterator[None]:
    """``model`` with ``found`` cut to its first ``TRACED_BLOCKS`` blocks, and its config to match."""
    config = _config(model, found.fqn)
    count = len(found.blocks)
    saved: dict[str, Any] = {}
    try:
        found.parent._modules[found.attr] = nn.ModuleList(list(found.blocks)[:TRACED_BLOCKS])
        if config is not None and getattr(config, "num_hidden_layers", None) == count:
            saved["num_hidden_layers"] = count
            config.num_hidden_layers = TRACED_BLOCKS
        types = getattr(config, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) == count:
            saved["layer_types"] = types
            config.layer_types = type(types)(types[:TRACED_BLOCKS])
        yield
    finally:
        found.parent._modules[found.attr] = found.blocks
        for key, value in saved.items():
            setattr(config, key, value)


# ---------------------------------------------------------------------------------------------- the graph


def stamp_blocks(gm: fx.GraphModule, found: BlockList) -> fx.GraphModule | None:
    """``gm`` (exported with ``TRACED_BLOCKS`` blocks of ``found``) grown to every block, or None if the
    traced blocks do not prove that copying the last one is exact."""
    stamp = _Stamp.verified(gm, found)
    if stamp is None:
        return None
    try:
        stamp.expand()
        gm.graph.lint()
        gm.recompile()
    except Exception:
        return None
    gm.meta[REUSED] = (found.fqn, TRACED_BLOCKS, len(found.blocks))
    return gm


class _Stamp:
    """The traced blocks of one graph, checked to form a recurrence; :meth:`expand` copies the last one."""

    def __init__(self, gm: fx.GraphModule, found: BlockList, blocks: list[list[fx.Node]], owner: dict[fx.Node, int]):
        self.gm, self.found, self.blocks, self.owner = gm, found, blocks, owner
        self.position = {node: i for i, node in enumerate(blocks[-2])}  # previous block's node -> index

    @classmethod
    def verified(cls, gm: fx.GraphModule, found: BlockList) -> _Stamp | None:
        parts = _partition(gm, found)
        if parts is None:
            return None
        blocks, owner = parts
        if not all(blocks) or not _recurrent(blocks, found):
            return None
        order = {node: i for i, node in enumerate(gm.graph.nodes)}
        last = max(order[node] for node in blocks[-1])
        for index, block in enumerate(blocks):
            for node in block:
                for user in node.users:
                    reader = owner.get(user)
                    if index < len(blocks) - 1 and reader is None:
                        return None  # a per-layer output (hidden-state tuples, caches)
                    if index == len(blocks) - 1 and reader is None and order[user] < last:
                        return None  # read from outside before the block has finished
        return cls(gm, found, blocks, owner)

    def expand(self) -> None:
        """Insert copies of the last traced block for blocks ``TRACED_BLOCKS .. N-1`` and rewire its readers."""
        graph, template = self.gm.graph, self.blocks[-1]
        attr_anchor = next((n for n in reversed(template) if n.op == "get_attr"), None)
        call_anchor = next(n for n in reversed(template) if n.op != "get_attr")
        source = self.found.path(TRACED_BLOCKS - 1)
        previous = {node: node for node in template}
        created: set[fx.Node] = set()
        for index in range(TRACED_BLOCKS, len(self.found.blocks)):
            self._register_tensors(index)
            rename = _Renamer(source, self.found.path(index))
            copies: dict[fx.Node, fx.Node] = {}

            def lookup(arg: fx.Node) -> fx.Node:
                if arg in copies:
                    return copies[arg]
                if arg in self.position:
                    return previous[template[self.position[arg]]]
                return arg

            for node in template:
                if node.op == "get_attr":
                    with graph.inserting_after(attr_anchor):
                        new = graph.get_attr(rename.path(node.target))
                    attr_anchor = new
                else:
                    with graph.inserting_after(call_anchor):
                        new = graph.create_node(
                            node.op, node.target, fx.map_arg(node.args, lookup), fx.map_arg(node.kwargs, lookup),
                            name=node.name, type_expr=node.type,
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
        traced = container(self.gm, self.found.path(TRACED_BLOCKS - 1), create=False)
        block = self.found.blocks[index]
        for name, module in traced.named_modules():
            target = container(self.gm, ".".join(p for p in (self.found.path(index), name) if p))
            for field in module._parameters:
                target.register_parameter(field, block.get_parameter(f"{name}.{field}" if name else field))
            for field in module._buffers:
                persistent = field not in module._non_persistent_buffers_set
                target.register_buffer(field, block.get_buffer(f"{name}.{field}" if name else field), persistent=persistent)


def _partition(gm: fx.GraphModule, found: BlockList) -> tuple[list[list[fx.Node]], dict[fx.Node, int]] | None:
    """Each traced block's nodes in graph order (its computations and its parameter reads)."""
    exact = re.compile(re.escape(found.fqn) + r"\.(\d+)")
    under = re.compile(re.escape(found.fqn) + r"\.(\d+)\.")
    blocks: list[list[fx.Node]] = [[] for _ in range(TRACED_BLOCKS)]
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
        if index >= TRACED_BLOCKS:
            return None
        blocks[index].append(node)
        owner[node] = index
    return blocks, owner


def _recurrent(blocks: list[list[fx.Node]], found: BlockList) -> bool:
    """Whether the last block is the one before it with the block index advanced by one.

    Node by node: same op and target (parameter paths renamed), same module path and class, same shapes,
    same constants; an input inside the block is the same position of the block; an input from the block
    before is at the position the previous block's input at that place has in block 0 (block 0 aligned
    to block 1, see :func:`_align`); any other input is the very same node for both (nothing per block
    enters from outside; a value block 0 computed once, such as a symbolic size, is read by every block).
    """
    first, before, last = blocks[-3], blocks[-2], blocks[-1]
    here = _Renamer(found.path(TRACED_BLOCKS - 2), found.path(TRACED_BLOCKS - 1))
    if len(before) != len(last) or any(_key(a, here) != _key(b, None) for a, b in zip(before, last)):
        return False
    chain = _align(first, before, _Renamer(found.path(TRACED_BLOCKS - 3), found.path(TRACED_BLOCKS - 2)))
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
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, Mapping) or isinstance(b, Mapping):
            return type(a) is type(b) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return type(a) is type(b) and a == b

    return all(same(a.args, b.args) and same(a.kwargs, b.kwargs) for a, b in zip(before, last))


def _key(node: fx.Node, rename: _Renamer | None) -> tuple:
    """What a node of one block must share with its counterpart in the next: op, target, module path
    and class, shape and dtype (``rename`` moves ``node``'s paths to the next block)."""
    target = rename.path(node.target) if rename and node.op == "get_attr" else node.target
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
            return self.target + path[len(self.source):]
        return path

    def stack(self, stack: dict[str, tuple[str, Any]]) -> dict[str, tuple[str, Any]]:
        key = tuple(stack.items())
        renamed = self._stacks.get(key)
        if renamed is None:
            renamed = {}
            for name, (path, cls) in stack.items():
                new_path = self.path(path)
                if new_path != path and name.endswith(path):
                    name = name[: len(name) - len(path)] + new_path
                renamed[name] = (new_path, cls)
            self._stacks[key] = renamed
        return dict(renamed)
