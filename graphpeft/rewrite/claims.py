"""Claims: which adapter's rule claims a site, and the ``node.meta`` keys the rewrite writes on graph nodes.

Matching makes one :class:`Claim` per (site, adapter); the rewrite records a site's claims on its node
(``graphpeft.claims``) and tags every node it inserts (``graphpeft.adapter_node``), so graph views and tests can
tell what graphpeft added and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import fx

CLAIMS = "graphpeft.claims"  # a site node's claims: list[Claim]
ADAPTER_NODE = "graphpeft.adapter_node"  # an inserted node's site, adapter, rule, method and role
ORIGINAL_ARGS = "graphpeft.original_args"  # a site node's args before a claim rewrote its inputs


@dataclass(frozen=True)
class Claim:
    """A rule's claim on a site for one adapter."""

    adapter: str
    rule: str
    method: str
    options: dict[str, Any]


def adapter_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes graphpeft inserted into ``gm``."""
    return [n for n in gm.graph.nodes if ADAPTER_NODE in n.meta]
