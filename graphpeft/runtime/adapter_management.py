"""Adapter bookkeeping of :class:`~graphpeft.runtime.model.GraphPeftModel`: add, activate, delete, save and
load adapters.

An adapter is an :class:`AdapterSpec` (its resolved rules and the sites they claimed) plus its
parameters under ``model.adapters.<base fqn>.<slot>.<adapter>``; this mixin keeps the two in step.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..errors import AdapterError, CallError, did_you_mean
from ..io.adapter_folder import load_into, save_pretrained
from ..rewrite.adapter_names import adapter_name_list, check_adapter_name
from ..rewrite.claims import Claim
from ..rewrite.match import match
from ..rewrite.sites import Site
from ..rules.builtin import resolve_rules
from ..rules.registry import get_method
from ..rules.rule_set import ResolvedRule
from .model_state import ModelState
from .ownership import hold
from .tied_weights import tied_parameters, warn_tied

if TYPE_CHECKING:
    from .model import GraphPeftModel  # the one class this part belongs to


@dataclass
class AdapterSpec:
    """One adapter: the rules that made it and the sites they claimed (site key -> (site, claim))."""

    rules: list[ResolvedRule]
    claims: dict[str, tuple[Site, Claim]]

    def methods(self) -> set[str]:
        return {claim.method for _, claim in self.claims.values()}


class AdapterManagement(ModelState):
    """The adapter half of ``GraphPeftModel``; it reads ``base_model``, ``adapters``, ``adapter_specs``,
    ``active_adapters``, ``_merged``, ``_disabled`` and ``_graphs`` set up by ``GraphPeftModel.__init__``."""

    @property
    def active_adapter(self) -> str | None:
        return self.active_adapters[0] if self.active_adapters else None

    def add_adapter(self, adapter_name: str, rules: Any, **overrides: Any) -> None:
        """Add an adapter made by ``rules`` (every form :func:`graphpeft.apply` takes, or resolved rules).

        The first adapter becomes active; later ones wait for :meth:`set_adapter`.
        """
        self._ensure_live("add_adapter()")
        check_adapter_name(adapter_name)
        if adapter_name in self.adapter_specs:
            raise AdapterError(f"adapter {adapter_name!r} already exists; delete it first or pick another name")
        if not (isinstance(rules, list) and rules and all(isinstance(r, ResolvedRule) for r in rules)):
            rules = resolve_rules(self.base_model, rules, overrides)
        claims = match(rules, self.sites(), adapter_name)
        hold(self.base_model, self)
        for param in self.base_model.parameters():
            param.requires_grad_(False)
        for site, claim in claims.values():
            get_method(claim.method).create(site, claim.options, self.base_model, self.adapters, adapter_name)
        self.adapter_specs[adapter_name] = AdapterSpec(list(rules), claims)
        warn_tied(adapter_name, claims, tied_parameters(self.base_model))
        if not self.active_adapters:
            self.active_adapters = [adapter_name]
        self._graphs.clear()

    def set_adapter(self, adapter_name: str | Sequence[str]) -> None:
        """Make ``adapter_name`` (one name, or several applied in order) the active adapters."""
        self._ensure_live("set_adapter()")
        names = adapter_name_list(adapter_name, "set_adapter()")
        if not names:
            raise AdapterError(
                "set_adapter([]) would run the bare base model; use `with model.disable_adapter():` for that, "
                "or name at least one adapter"
            )
        for name in names:
            self._spec(name)
        self.active_adapters = names

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter and its parameters. Deleting an active adapter warns, naming the new active ones."""
        self._ensure_live("delete_adapter()")
        self._spec(adapter_name)
        if adapter_name in self._merged:
            raise AdapterError(f"adapter {adapter_name!r} is merged; call unmerge() before deleting it")
        was_active = adapter_name in self.active_adapters
        self.delete_adapter_state(adapter_name)
        if was_active:
            warnings.warn(f"{adapter_name!r} was the active adapter; {_active_now(self.active_adapters)}", stacklevel=2)

    def delete_adapter_state(self, adapter_name: str) -> None:
        """Drop whatever exists of an adapter (also a half-created one); no error if absent."""
        for _, slot in list(adapter_slots(self.adapters)):
            if adapter_name in slot:
                del slot[adapter_name]
        self.adapter_specs.pop(adapter_name, None)
        self.active_adapters = [a for a in self.active_adapters if a != adapter_name]
        if not self.active_adapters and self.adapter_specs:
            self.active_adapters = [next(iter(self.adapter_specs))]
        self._graphs.clear()

    def save_pretrained(
        self,
        save_directory: str,
        adapter_names: Sequence[str] | None = None,
        overwrite: bool = False,
        *,
        selected_adapters: Sequence[str] | None = None,
        is_main_process: bool = True,
        safe_serialization: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        **unsupported: Any,
    ) -> None:
        """Write adapter weights, PEFT's config (when PEFT can express it) and graphpeft's manifest.

        ``selected_adapters``, ``is_main_process``, ``safe_serialization`` and ``state_dict`` are
        accepted as PEFT's ``save_pretrained`` takes them, so training loops written for PEFT work:
        only the main process writes; the format is always safetensors (never pickle); the weights
        are read from the adapter parameters themselves, so ``state_dict`` is not consulted.
        """
        if unsupported:
            raise CallError(
                f"save_pretrained() takes no argument {', '.join(map(repr, unsupported))}; it takes save_directory, "
                "adapter_names (or selected_adapters), overwrite, is_main_process, safe_serialization and state_dict"
            )
        if not is_main_process:
            return
        names = adapter_names if adapter_names is not None else selected_adapters
        save_pretrained(
            cast("GraphPeftModel", self), save_directory, list(names) if names is not None else None, overwrite
        )

    def load_adapter(self, directory: str, adapter_name: str, is_trainable: bool = False) -> None:
        """Add an adapter from a graphpeft or PEFT directory (this model is unchanged if it fails)."""
        self._ensure_live("load_adapter()")
        load_into(cast("GraphPeftModel", self), directory, adapter_name, is_trainable)

    def _spec(self, name: str) -> AdapterSpec:
        if not isinstance(name, str):
            raise AdapterError(
                f"adapter names are strings, got {name!r}; adapters: {', '.join(self.adapter_specs) or '(none)'}"
            )
        if name not in self.adapter_specs:
            raise AdapterError(
                f"no adapter named {name!r}{did_you_mean(name, self.adapter_specs)}; "
                f"adapters: {', '.join(self.adapter_specs) or '(none)'}"
            )
        return self.adapter_specs[name]

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model inside this block (merged adapters are unmerged meanwhile)."""
        self._ensure_live("disable_adapter()")
        merged = list(self._merged)
        if merged:
            self.unmerge()
        self._disabled = True
        try:
            yield
        finally:
            self._disabled = False
            if merged:
                self.merge(merged)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts, counted as PEFT counts them."""
        trainable = total = 0
        for _, param in self.named_parameters():
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        counts = (
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )
        print(counts)  # noqa: T201 - PEFT's method of this name prints

    def adapter_parameters(self, adapter_name: str | None = None) -> dict[str, nn.Parameter]:
        """``name -> parameter`` of one adapter (all adapters when None).

        An adapter owns exactly the entries under its name in the slots (``<host>.<slot>.<adapter>``):
        a name that is also a part of some path (``"layers"``, ``"lora_A"``) selects only its own.
        """
        out = {}
        for path, slot in adapter_slots(self.adapters):
            for name in [adapter_name] if adapter_name is not None else list(slot.keys()):
                if name not in slot:
                    continue
                entry = slot[name]
                if isinstance(entry, nn.Parameter):
                    out[f"{path}.{name}"] = entry
                elif isinstance(entry, nn.Module):
                    out.update({f"{path}.{name}.{sub}": p for sub, p in entry.named_parameters()})
        return out


def adapter_slots(store: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.ParameterDict | nn.ModuleDict]]:
    """``(path, slot)`` for every slot of the adapter tree ``store``, in registration order: the
    ``ParameterDict``/``ModuleDict`` keyed by adapter name. The walk does not enter an adapter's own modules."""
    for name, child in store._modules.items():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, (nn.ParameterDict, nn.ModuleDict)):
            yield path, child
        elif child is not None:
            yield from adapter_slots(child, path)


def _active_now(active: list[str]) -> str:
    if not active:
        return "no adapter is active now; add or load one, or the model runs the bare base model"
    if len(active) == 1:
        return f"the active adapter is now {active[0]!r}"
    return f"the active adapters are now {', '.join(map(repr, active))}"
