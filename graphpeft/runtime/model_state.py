"""What a :class:`~graphpeft.runtime.model.GraphPeftModel` holds, declared once.

``GraphPeftModel`` is assembled from parts that live in their own modules (adapter management, weight
folding, graph dispatch); each part subclasses :class:`ModelState`, so the type checker knows the state
the others set up in ``GraphPeftModel.__init__`` and the methods they define. Nothing here exists at run
time beyond the class itself: the attributes are annotations, the methods are declared for type checking only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import fx, nn

if TYPE_CHECKING:
    from ..rewrite.quantized_base import Quantization
    from ..rewrite.sites import Site
    from .adapter_management import AdapterSpec
    from .graph_dispatch import BaseIdentity


class ModelState(nn.Module):
    """The state ``GraphPeftModel.__init__`` sets up, which its parts read and write."""

    base_model: nn.Module
    adapters: nn.Module  # adapter parameters: ``<base fqn>.<slot>.<adapter>``
    adapter_specs: dict[str, AdapterSpec]
    active_adapters: list[str]
    checkpointing: bool
    reuse_blocks: bool
    quantization: Quantization | None  # what quantize() did, until dequantize()
    _graphs: dict[Any, fx.GraphModule]  # (signature, adapters) -> rewritten graph
    _base_graphs: dict[Any, fx.GraphModule]  # signature -> pristine export
    _merged: list[str]
    _disabled: bool
    _unloaded: bool
    _transformers: bool
    _params: list[str]
    _example: dict[str, Any] | None
    _dynamic_shapes: Any
    _sites: list[Site] | None
    _base_identity: BaseIdentity
    _grad_before: dict[int, bool]

    if TYPE_CHECKING:

        def _ensure_live(self, action: str) -> None: ...

        def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]: ...

        def _spec(self, name: str) -> AdapterSpec: ...

        def _base_graph(self) -> fx.GraphModule: ...

        def sites(self) -> list[Site]: ...

        def merge(self, adapter_names: str | Sequence[str] | None = None) -> None: ...

        def unmerge(self) -> None: ...
