"""What :class:`~graphpeft.runtime.model.GraphPeftModel` does to the base weights themselves: merge adapters into
them and back out, quantize and dequantize them, and hand the base model back (``unload``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import AdapterError
from ..rewrite.adapter_names import adapter_name_list
from ..rewrite.quantized_base import Quantization, dequantize_base, quantize_base, refuse_on_quantized
from ..rules.registry import get_method
from .model_state import ModelState
from .ownership import release
from .tied_weights import refuse_tied, tied_parameters


class WeightFolding(ModelState):
    """The base-weight half of ``GraphPeftModel``; it reads ``base_model``, ``adapters``, ``active_adapters``,
    ``_merged``, ``quantization``, ``_grad_before`` and the graph caches set up by ``GraphPeftModel.__init__``."""

    def merge(self, adapter_names: str | Sequence[str] | None = None) -> None:
        """Fold the adapters (one name, a list, or the active ones) into the base weights; forward then runs
        the plain base graph."""
        self._ensure_live("merge()")
        names = adapter_name_list(adapter_names, "merge()") if adapter_names is not None else list(self.active_adapters)
        if self.quantization:
            refuse_on_quantized(self.base_model, "merge()", "rounding the sum into codes would lose the adapter")
        tied = tied_parameters(self.base_model)
        for name in names:
            spec = self._spec(name)
            refuse_tied(name, spec.claims, tied)
            if name in self._merged:
                raise AdapterError(f"adapter {name!r} is already merged; call unmerge() first")
            blocked = sorted(m for m in spec.methods() if not get_method(m).mergeable)
            if blocked:
                raise AdapterError(
                    f"adapter {name!r} uses {', '.join(blocked)}, which cannot be merged (no weight can absorb a "
                    "non-linear adapter block); run it unmerged, or merge only the other adapters"
                )
        for name in names:
            for site, claim in self._spec(name).claims.values():
                get_method(claim.method).merge(site, claim.options, self.base_model, self.adapters, name)
            self._merged.append(name)

    def unmerge(self) -> None:
        """Undo :meth:`merge` (restores the base weights up to float rounding)."""
        self._ensure_live("unmerge()")
        while self._merged:
            name = self._merged.pop()
            for site, claim in reversed(list(self._spec(name).claims.values())):
                get_method(claim.method).unmerge(site, claim.options, self.base_model, self.adapters, name)

    def quantize(self, scheme: str) -> Quantization:
        """Store the frozen base linear weights as ``"int8"`` or ``"nf4"`` codes
        (see :mod:`graphpeft.rewrite.quantized_base`); returns (and keeps as ``quantization``) the
        :class:`~graphpeft.rewrite.quantized_base.Quantization` report."""
        self._ensure_live("quantize()")
        if self._merged:
            raise AdapterError("unmerge() before quantizing: merged adapters would be rounded into the codes")
        done = self.quantization = quantize_base(self.base_model, scheme, self._base_graph())
        self._graphs.clear()
        self._base_graphs.clear()
        return done

    def _refuse_quantized(self, action: str) -> None:
        if self.quantization:
            refuse_on_quantized(self.base_model, action, "its graphs do not decode quantized weights yet")

    def dequantize(self) -> None:
        """Give the base full-precision weights again (decoded from the codes); merging is then allowed."""
        self._ensure_live("dequantize()")
        dequantize_base(self.base_model)
        self.quantization = None
        self._graphs.clear()
        self._base_graphs.clear()

    @property
    def merged(self) -> bool:
        return bool(self._merged)

    def merge_and_unload(self) -> nn.Module:
        """Merge the active adapters and return the base model itself (its own forward, generate, ...).
        This wrapper is finished afterwards (see :meth:`unload`)."""
        self._ensure_live("merge_and_unload()")
        self.merge([a for a in self.active_adapters if a not in self._merged])
        return self.unload()

    def unload(self) -> nn.Module:
        """Return the base model without adapters (merged ones stay folded in), trainability restored.

        The base is handed back: it may be adapted again, and this wrapper refuses every call that would
        touch it (forward, merge, add_adapter, ...; saving its adapters still works)."""
        self._ensure_live("unload()")
        self._refuse_quantized("unload()")
        for param in self.base_model.parameters():
            param.requires_grad_(self._grad_before.get(id(param), True))
        self._graphs.clear()
        self._base_graphs.clear()
        self._unloaded = True
        release(self.base_model, self)
        return self.base_model
