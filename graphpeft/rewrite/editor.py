"""The :class:`SiteEditor`: how a method inserts its nodes for one claim at one site.

New nodes are named after their site (``model_layers_0_self_attn_q_proj_lora_A``), carry the site's
``nn_module_stack`` and a ``graphpeft.adapter_node`` tag, and read the adapter parameters the runtime owns,
attached to the GraphModule under the same names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from ..tracing.graph_utils import container
from .claims import ADAPTER_NODE, ORIGINAL_ARGS, Claim
from .sites import Site, input_index

# Adapters of sites whose host is not their module (parameter sites) hang here in a graph, so
# their paths cannot collide with the base parameters (``experts.gate_up_proj`` is one).
GRAPH_ADAPTERS = "graphpeft_adapters"


class SiteEditor:
    """Inserts one adapter's nodes for one site, right after the site node.

    ``store`` is the runtime's adapter tree (mirrors base FQNs); slots such as
    ``lora_A`` are ``ParameterDict``/``ModuleDict`` keyed by adapter name and are
    shared, not copied, into the GraphModule.

    Several claims on one site compose like nested modules, in claim order: ``output``
    is the site's result after the earlier claims (the node itself for the first), and
    ``inner`` holds the nodes those claims created, so a later claim wraps them all.
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        node: fx.Node | None,
        site: Site,
        claim: Claim,
        store: nn.Module,
        training: bool,
        output: fx.Node | None = None,
        inner: frozenset[fx.Node] = frozenset(),
    ):
        self.gm = gm
        self.node = node
        self.site = site
        self.claim = claim
        self.store = store
        self.training = training
        self.created: set[fx.Node] = set()
        self.output = output if output is not None else node
        self.inner = inner
        self._cursor = self.output
        self._prefix = (site.fqn or "root").replace(".", "_")
        if site.occurrence:
            self._prefix += f"_{site.occurrence}"
        if claim.adapter != "default":
            self._prefix += f"_{claim.adapter}"

    @property
    def options(self) -> dict[str, Any]:
        return self.claim.options

    @property
    def site_node(self) -> fx.Node:
        """The node of an op site (a module site, which only the train method claims, has none)."""
        assert self.node is not None
        return self.node

    def _tag(self, new: fx.Node, role: str) -> fx.Node:
        if self.node is not None and "nn_module_stack" in self.node.meta:
            new.meta["nn_module_stack"] = dict(self.node.meta["nn_module_stack"])
        new.meta[ADAPTER_NODE] = {
            "site": self.site.key,
            "adapter": self.claim.adapter,
            "rule": self.claim.rule,
            "method": self.claim.method,
            "role": role,
        }
        self.created.add(new)
        return new

    def param(self, slot: str, subpath: str = "", adapter: str | None = None) -> fx.Node:
        """A ``get_attr`` node for ``<host>.<slot>.<adapter>[.<subpath>]`` (host: ``site.host``;
        ``adapter``: the claim's by default)."""
        slot_container = container(self.store, f"{self.site.host}.{slot}", create=False)
        path = self.site.fqn if self.site.host == self.site.fqn else f"{GRAPH_ADAPTERS}.{self.site.host}"
        host = container(self.gm, path)
        if host._modules.get(slot) is not slot_container:
            host.register_module(slot, slot_container)
        target = ".".join(p for p in (path, slot, adapter or self.claim.adapter, subpath) if p)
        with self.gm.graph.inserting_after(self._cursor):
            new = self.gm.graph.get_attr(target)
        new.name = self.gm.graph._graph_namespace.create_name(f"{self._prefix}_{slot}", new)
        self._cursor = new
        return self._tag(new, slot)

    def constant(self, role: str, tensor: torch.Tensor) -> fx.Node:
        """A ``get_attr`` node for a constant tensor, kept as a buffer of the GraphModule."""
        name = self.gm.graph._graph_namespace.create_name(f"{self._prefix}_{role}", None)
        self.gm.register_buffer(name, tensor)
        with self.gm.graph.inserting_after(self._cursor):
            new = self.gm.graph.get_attr(name)
        self._cursor = new
        return self._tag(new, role)

    def call(self, target: Callable[..., Any], *args: Any, role: str) -> fx.Node:
        """Insert ``target(*args)`` after the previous inserted node."""
        with self.gm.graph.inserting_after(self._cursor):
            new = self.gm.graph.create_node("call_function", target, args, {}, name=f"{self._prefix}_{role}")
        self._cursor = new
        return self._tag(new, role)

    def redirect(self, output: fx.Node, original: fx.Node | None = None) -> None:
        """Make every user of the site's result (but our own nodes) read ``output``."""
        original = original or self.output
        assert original is not None
        original.replace_all_uses_with(output, delete_user_cb=lambda user: user not in self.created)
        if original is self.output:
            self.output = output

    @property
    def site_input(self) -> fx.Node:
        """The site op's activation input as it was before any claim rewrote it (x of linear/addmm/mm/
        matmul/bmm/grouped mm, ids of embedding)."""
        node = self.site_node
        args = node.meta.get(ORIGINAL_ARGS, node.args)
        return args[1] if self.site.op == "embedding" else args[input_index(node)]

    def before(self) -> None:
        """Insert the next nodes right before the site node (to rewrite its inputs)."""
        self._cursor = self.site_node.prev

    def replace_input(self, old: fx.Node, new: fx.Node) -> None:
        """Make the site node, and the earlier claims' nodes, read ``new`` instead of ``old``."""
        node = self.site_node
        node.meta.setdefault(ORIGINAL_ARGS, node.args)
        for user in [node, *self.inner]:
            if user is not new and old in user.all_input_nodes:
                user.replace_input_with(old, new)
