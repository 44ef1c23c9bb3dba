"""Block reuse: export a deep model with a few of its repeated blocks, then stamp out the rest.

``torch.export`` spends a roughly fixed time per decoder block (about 0.3 s for a 7B Llama layer on the
meta device), tracing the same Python code again and again. When a model holds a long ``nn.ModuleList`` of
identical blocks (``model.layers``), :func:`export_reusing_blocks` exports it with that list cut to its first
``TRACED_BLOCKS`` blocks (``config.num_hidden_layers`` and ``config.layer_types`` cut to match, everything
restored afterwards), then :func:`graphpeft.tracing.block_stamp.stamp_blocks` copies the last traced block into the
graph once per missing block, after checking that the copy is exact. ``nn_module_stack``, parameter paths and
the GraphModule's tensors name each block as a full export does, so sites, checkpointing and visualization
cannot tell the difference.

If the list's blocks differ (in class, submodules, tensors, plain attributes, hooks or ``layer_types``), the
cut model does not export, or the graph does not prove the copy exact, the caller exports the whole model.
``GRAPHPEFT_REUSE_BLOCKS=0`` in the environment turns reuse off everywhere;
``graphpeft.apply(..., reuse_blocks=False)`` for one model.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .block_stamp import REUSED, Blocks, stamp_blocks

__all__ = ["ENV_SWITCH", "REUSED", "TRACED_BLOCKS", "BlockList", "enabled", "export_reusing_blocks", "find_block_list"]

TRACED_BLOCKS = 3  # block 0 starts the chain; blocks 1 and 2 prove that block j reads block j-1 like 2 reads 1
ENV_SWITCH = "GRAPHPEFT_REUSE_BLOCKS"
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


def export_reusing_blocks(
    model: nn.Module, kwargs: Mapping[str, Any], export: Callable[[], fx.GraphModule]
) -> fx.GraphModule | None:
    """``export()`` run on ``model`` cut to ``TRACED_BLOCKS`` blocks and stamped back to full depth,
    or None when reuse does not apply (then export the whole model)."""
    if not enabled() or any(kwargs.get(flag) is True for flag in _PER_LAYER_OUTPUT_FLAGS):
        return None
    if not all(value is None or isinstance(value, (torch.Tensor, bool, int, float, str)) for value in kwargs.values()):
        return None  # cache objects carry per-layer state
    found = find_block_list(model)
    if found is None:
        return None
    try:
        with _truncated(model, found):
            graph = export()
    except Exception:  # noqa: BLE001 - the cut model may not export where the whole one does; correctness first
        return None
    return stamp_blocks(graph, Blocks(found.fqn, found.blocks, TRACED_BLOCKS))


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
    except Exception:  # noqa: BLE001 - an attribute that does not compare (an array): not provably identical
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
