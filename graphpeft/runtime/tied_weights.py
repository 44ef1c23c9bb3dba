"""Tied weights: one tensor reachable under several parameter names (GPT-2's ``transformer.wte.weight`` is
``lm_head.weight``). An adapter on one use of it is fine; merging would fold the update into every use."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import AdapterError
from ..rewrite.claims import Claim
from ..rewrite.sites import Site
from ..rules.registry import get_method


def tied_parameters(model: nn.Module) -> dict[str, list[str]]:
    """``name -> the other names`` of each tied parameter of ``model``: one tensor reachable under several
    names (GPT-2's ``transformer.wte.weight`` is ``lm_head.weight``), or parameters sharing memory."""
    groups: dict[Any, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(_memory(param), []).append(name)
    return {name: [o for o in names if o != name] for names in groups.values() if len(names) > 1 for name in names}


def _memory(param: torch.Tensor) -> Any:
    pointer = param.untyped_storage().data_ptr() if param.device.type != "meta" else 0
    return (param.device, pointer) if pointer else id(param)


def merged_sites(claims: dict[str, tuple[Site, Claim]]) -> list[Site]:
    """The sites (of an adapter's ``claims``) whose weights merging writes into."""
    return [site for site, claim in claims.values() if get_method(claim.method).mergeable and site.weight]


def tied_sites(claims: dict[str, tuple[Site, Claim]], tied: dict[str, list[str]]) -> list[tuple[Site, str, str]]:
    """``(site, the site's own name of its weight, the weight's other names)`` for each merged site whose
    weight is tied (the export may read the tensor under any of its names)."""
    out = []
    for site in merged_sites(claims):
        if site.weight in tied:
            names = [site.weight, *tied[site.weight]]
            own = next((n for n in names if n.rpartition(".")[0] == site.fqn), site.weight)
            out.append((site, own, ", ".join(n for n in names if n != own)))
    return out


def refuse_tied(name: str, claims: dict[str, tuple[Site, Claim]], tied: dict[str, list[str]]) -> None:
    """Merging folds the update into the weight itself, so a tied weight would change at its other uses too."""
    for _, own, others in tied_sites(claims, tied):
        raise AdapterError(
            f"cannot merge adapter {name!r}: {own} is tied to {others} (one tensor), so folding the update into "
            f"it would change {others} too; keep the adapter unmerged, or untie the weights "
            "(e.g. load the model with tie_word_embeddings=False)"
        )


def warn_tied(name: str, claims: dict[str, tuple[Site, Claim]], tied: dict[str, list[str]]) -> None:
    """PEFT warns when a tied layer is adapted; say which use the adapter changes and that merging is refused."""
    for site, own, others in tied_sites(claims, tied):
        warnings.warn(
            f"adapter {name!r}: {own} is tied to {others} (one tensor); the adapter changes only its use at "
            f"{site.fqn}, and merge() will be refused "
            "(folding the update into the shared tensor would change every use)",
            stacklevel=3,
        )
