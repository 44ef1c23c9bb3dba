"""The rewrite as the runtime calls it: an export in, an adapted graph out.

The runtime and generation reach the rewrite only through these two functions:

- :func:`prepare_export` runs once on each pristine export (every adapted graph is a copy of it);
- :func:`adapt_graph` places adapters on a copy of an export and runs the graph passes the settings ask for.

An adapter is given as its name and its claims (site key -> (site, claim), as matching made them), in the
order they compose at a site; ``GraphSettings.mixed`` stacks them instead, one slot per adapter plus the base
model, selected per row by the ``graphpeft_adapter_rows`` input (:mod:`graphpeft.rewrite.mixed`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import fx, nn

from ..errors import TraceError
from ..rules.registry import get_method
from ..tracing.graph_utils import RUNTIME_CHECKS, drop_checks
from .claims import Claim
from .graph_passes.activation_checkpointing import checkpoint_blocks
from .graph_passes.gqa import use_native_gqa
from .graph_passes.head_loss import fuse_head_loss
from .graph_passes.quantize import quantize_graph
from .materialize import annotate, materialize
from .mixed import rewrite_mixed
from .sites import Site, graph_sites, module_sites

AdapterClaims = Mapping[str, tuple[Site, Claim]]


@dataclass(frozen=True)
class GraphSettings:
    """What an adapted graph is for.

    ``training``: a training graph (dropout active, gradients flow). ``skip_missing``: leave out claimed sites the
    graph never computes (an encoder-decoder's decode step runs neither the encoder nor the cross-attention
    key/value projections) instead of refusing. ``mixed``: stack the adapters for mixed-adapter batches.
    ``quantized``: the base weights are stored quantized (the graph dequantizes them). ``fuse_head_loss``,
    ``checkpointing``: the training-graph passes. ``drop_runtime_checks``: drop the export's input checks
    (generation guarantees ids, masks and cache lengths by construction).
    """

    training: bool
    skip_missing: bool = False
    mixed: bool = False
    quantized: bool = False
    fuse_head_loss: bool = False
    checkpointing: bool = False
    drop_runtime_checks: bool = False


def prepare_export(gm: fx.GraphModule, drop_dtype_checks: bool = True) -> None:
    """The passes every pristine export gets once: export's dtype asserts dropped (forward graphs), grouped-query
    attention through SDPA's ``enable_gqa`` instead of repeated keys and values."""
    if drop_dtype_checks:
        drop_checks(gm)
    use_native_gqa(gm)


def adapt_graph(
    gm: fx.GraphModule,
    adapters: Sequence[tuple[str, AdapterClaims]],
    base: nn.Module,
    store: nn.Module,
    settings: GraphSettings,
) -> fx.GraphModule:
    """Place ``adapters`` (name, claims) on ``gm`` (a copy of an export of ``base``; adapter parameters live in
    ``store``), then run the graph passes ``settings`` asks for. Returns ``gm``, recompiled."""
    if settings.mixed:
        rewrite_mixed(gm, adapters, store, settings.training, settings.skip_missing)
    elif adapters:
        _place(gm, adapters, base, store, settings)
    if settings.quantized:
        quantize_graph(gm, base)
    if settings.fuse_head_loss:
        fuse_head_loss(gm)
    if settings.checkpointing:
        checkpoint_blocks(gm)
    if settings.drop_runtime_checks:
        drop_checks(gm, RUNTIME_CHECKS)
    return gm


def _place(
    gm: fx.GraphModule,
    adapters: Sequence[tuple[str, AdapterClaims]],
    base: nn.Module,
    store: nn.Module,
    settings: GraphSettings,
) -> None:
    located: dict[str, tuple[Site, fx.Node | None]] = {s.key: (s, n) for s, n in graph_sites(gm)}
    located.update({s.key: (s, None) for s in module_sites(base)})
    wanted: dict[str, list[Claim]] = {}
    for _, adapter_claims in adapters:
        for key, (_, claim) in adapter_claims.items():
            if not get_method(claim.method).virtual_tokens:  # they enter through the inputs instead
                wanted.setdefault(key, []).append(claim)
    plan: list[tuple[Site, fx.Node | None, list[Claim]]] = []
    for key, claims in wanted.items():
        if key not in located:
            if settings.skip_missing:
                continue
            raise TraceError(
                f"site {key} (claimed by rule {claims[0].rule!r}) is not in the graph traced for this call; "
                "the model's graph changes with these inputs, so the adapter cannot be placed"
            )
        site, node = located[key]
        plan.append((site, node, claims))
    annotate(plan)
    materialize(gm, plan, store, settings.training)
