"""The interface of an adapter method.

A method says which op kinds it adapts, which options it takes, how to create
its parameters for a site, how to rewrite a site node into an adapter subgraph,
and (if it can) how to merge into and unmerge from the base weight. Each module of
this package defines one (or a family) and registers it (:mod:`graphpeft.rules.registry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .dry_run import meta_state_shapes

if TYPE_CHECKING:
    from ...rules.options import Option
    from ..editor import SiteEditor
    from ..sites import Site


class Method:
    """Interface every adapter method implements."""

    name: ClassVar[str]
    options: ClassVar[dict[str, Option]]
    site_ops: ClassVar[tuple[str, ...]]
    mergeable: ClassVar[bool] = False
    mixable: ClassVar[bool] = False  # can serve mixed-adapter batches (rewrite_mixed)
    peft_type: ClassVar[str | None] = None
    virtual_tokens: ClassVar[bool] = False  # tokens enter through the graph's inputs (graphpeft.rewrite.virtual_inputs)
    # Why a site of another op kind than ``site_ops`` cannot be adapted ("{op}" stands for the site's op);
    # None: the method checks op kinds itself, or takes any.
    wrong_op: ClassVar[str | None] = None

    def check_site(self, site: Site, options: dict[str, Any]) -> str | None:
        """Why this method cannot adapt ``site`` with ``options`` (None = it can); by default, with
        ``wrong_op`` set, a site whose op is not in ``site_ops``."""
        if self.wrong_op is not None and site.op not in self.site_ops:
            return self.wrong_op.replace("{op}", site.op)
        return None

    def create(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        """Create this adapter's parameters for ``site`` inside ``store``."""
        raise NotImplementedError

    def rewrite(self, edit: SiteEditor) -> None:
        """Insert the adapter subgraph for one site."""
        raise NotImplementedError

    def rewrite_mixed(self, edit: SiteEditor, claims: list[Any], order: tuple[str, ...], rows: Any) -> None:
        """Insert the stacked subgraph of several adapters at one site for a mixed-adapter batch.

        ``claims[i]`` is adapter ``order[i]``'s claim on the site (None: it has none; the last
        slot is always None, the base model); ``rows`` is the (batch,) slot index per row.
        """
        raise NotImplementedError(f"{self.name} adapters cannot serve mixed-adapter batches")

    def merge(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        raise NotImplementedError(f"{self.name} adapters cannot be merged")

    def unmerge(self, site: Site, options: dict[str, Any], model: nn.Module, store: nn.Module, adapter: str) -> None:
        raise NotImplementedError(f"{self.name} adapters cannot be unmerged")

    def state(self, site: Site, store: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
        """This adapter's tensors for ``site``, keyed by PEFT's per-module key suffix."""
        raise NotImplementedError

    def load_state(self, site: Site, store: nn.Module, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        """Copy tensors (keys as :meth:`state` returns them) into the parameters."""
        raise NotImplementedError

    def state_shapes(self, site: Site, options: dict[str, Any], model: nn.Module) -> dict[str, tuple[int, ...]]:
        """The shapes :meth:`state` will give once :meth:`create` ran, found without allocating them (a
        loader checks a file's tensors against them before creating anything). By default, a dry run of
        :meth:`create` on meta copies of the base weights (:mod:`.dry_run`); a method whose ``create``
        reads more of the base model than ``get_parameter``/``get_submodule`` computes them itself."""
        return meta_state_shapes(self, site, options, model)


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype adapter tensors are stored in beside a base ``weight``: fp32 for fp16/bf16 bases, else the weight's."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
