"""A dry run of :meth:`Method.create`: the shapes an adapter's tensors will have, without allocating them.

The method creates its parameters as usual, but every weight or module it reads from the base model is a
meta copy (shape and dtype, no data), so what it creates lives on the meta device too. A loader compares
these shapes with a file's tensors before any real parameter exists: a config that asks for a huge rank
or table is refused instead of allocated.
"""

from __future__ import annotations

import copy
import itertools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..sites import Site
    from .base import Method

DRY_RUN = "dry_run"


class MetaShadow(nn.Module):
    """Stands in for the base model in a dry run: the parameters and submodules it hands out are meta copies."""

    model: nn.Module

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: the shadow holds none of the model's tensors

    def get_parameter(self, name: str) -> nn.Parameter:
        return _meta_parameter(self.model.get_parameter(name))

    def get_submodule(self, name: str) -> nn.Module:
        module = self.model.get_submodule(name)
        memo = {id(t): _meta(t) for t in itertools.chain(module.parameters(), module.buffers())}
        return copy.deepcopy(module, memo)


def _meta(tensor: torch.Tensor) -> torch.Tensor:
    return _meta_parameter(tensor) if isinstance(tensor, nn.Parameter) else torch.empty_like(tensor, device="meta")


def _meta_parameter(param: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)


def meta_state_shapes(
    method: Method, site: Site, options: dict[str, Any], model: nn.Module
) -> dict[str, tuple[int, ...]]:
    """``suffix -> shape`` of what ``method.state`` would return after creating the adapter for ``site``."""
    store = nn.Module()
    method.create(site, options, MetaShadow(model), store, DRY_RUN)
    return {suffix: tuple(tensor.shape) for suffix, tensor in method.state(site, store, DRY_RUN).items()}
