"""Materialize: turn a plan of claimed sites into adapter subgraphs.

The plan lists, per site, its node and the claims on it (one per adapter placed there).
:func:`annotate` records the claims in each node's ``node.meta["graphpeft.claims"]`` (what
graph views show); :func:`materialize` lets each claim's method insert its nodes through a
:class:`~.editor.SiteEditor`, claim after claim, then cleans up and recompiles the graph.
"""

from __future__ import annotations

from torch import fx, nn

from ..rules.registry import get_method
from .claims import CLAIMS, Claim
from .editor import SiteEditor
from .sites import Site


def annotate(plan: list[tuple[Site, fx.Node | None, list[Claim]]]) -> None:
    """Record each site's claims in its node's meta (the dry-run view of the rewrite)."""
    for _, node, claims in plan:
        if node is not None:
            node.meta[CLAIMS] = list(claims)


def materialize(
    gm: fx.GraphModule, plan: list[tuple[Site, fx.Node | None, list[Claim]]], store: nn.Module, training: bool
) -> fx.GraphModule:
    """Apply every claim of the plan (``node`` is None for whole-module sites), then lint and recompile."""
    for site, node, claims in plan:
        output: fx.Node | None = node
        inner: frozenset[fx.Node] = frozenset()
        for claim in claims:
            edit = SiteEditor(gm, node, site, claim, store, training, output, inner)
            get_method(claim.method).rewrite(edit)
            output, inner = edit.output, inner | edit.created
    return finish(gm)


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop ``get_attr`` nodes a rewrite left unused, lint and recompile."""
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm
