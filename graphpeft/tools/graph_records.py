"""What the graph views show: the graphs of a model (its rewritten graph and the base graph it came from), one
plain record per FX node, and the rewrite diff between the two. :mod:`.viz` turns them into networkx graphs and
DOT text, :mod:`.viz_html` into the HTML viewer."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from ..errors import UsageError
from ..rewrite.claims import ADAPTER_NODE, CLAIMS
from ..rewrite.pipeline import GraphSettings, adapt_graph
from ..runtime.model import GraphPeftModel
from ..tracing.graph_utils import clone_graph


def graphs_of(obj: Any) -> tuple[fx.GraphModule, fx.GraphModule | None]:
    """``(graph, base graph)``: for a GraphPeftModel, its active adapters placed on a copy of the
    base graph of the canonical call (the rewrite its forward runs, without a second export) and
    that base graph; for a GraphModule, itself and None."""
    if isinstance(obj, GraphPeftModel):
        base = obj._base_graph()
        rewritten = clone_graph(base)  # shares the base's tensors
        adapt_graph(
            rewritten,
            obj.adapter_claims(obj._graph_adapters()),
            obj.base_model,
            obj.adapters,
            GraphSettings(obj.training),
        )
        return rewritten, base
    if isinstance(obj, fx.GraphModule):
        return obj, None
    kind = type(obj).__name__
    hint = "wrap it with graphpeft.apply(model, rules) first" if isinstance(obj, nn.Module) else "pass a model"
    raise UsageError(f"graph views take a GraphPeftModel or a torch.fx.GraphModule, got {kind}; {hint}")


def module_stack(node: fx.Node, known: set[str] | None = None) -> list[str]:
    """Module FQNs enclosing ``node``, outermost first, root excluded.

    Parameter reads (``get_attr``) carry no stack in export graphs; their target's
    prefixes that name known modules stand in for it.
    """
    stack = node.meta.get("nn_module_stack")
    if stack:
        return [str(path) for path, _ in stack.values() if path and not str(path).startswith("_")]
    if node.op == "get_attr" and known is not None:
        parts = str(node.target).split(".")[:-1]
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        return [p for p in prefixes if p in known]
    return []


def module_classes(gm: fx.GraphModule) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in gm.graph.nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            if path and not str(path).startswith("_"):
                out[str(path)] = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else cls.__name__
    return out


def _kind(node: fx.Node) -> str:
    if ADAPTER_NODE in node.meta:
        return "adapter"
    if node.meta.get(CLAIMS):
        return "site"
    return {"placeholder": "input", "output": "output", "get_attr": "param"}.get(node.op, "op")


def _target(node: fx.Node) -> str:
    if node.op == "call_function" and not hasattr(node.target, "_schema"):
        return getattr(node.target, "__name__", str(node.target))  # operator.getitem -> getitem
    return str(node.target)


def node_records(gm: fx.GraphModule) -> list[dict[str, Any]]:
    """One plain dict per FX node (name, op, target, kind, stack, adapter, claims, inputs)."""
    classes = module_classes(gm)
    known = set(classes)
    records = []
    for node in gm.graph.nodes:
        adapter = node.meta.get(ADAPTER_NODE)
        claims = [f"{c.adapter}:{c.rule}:{c.method}" for c in node.meta.get(CLAIMS) or []]
        records.append(
            {
                "id": node.name,
                "op": node.op,
                "target": _target(node),
                "kind": _kind(node),
                "stack": module_stack(node, known),
                "adapter": dict(adapter) if adapter else None,
                "claims": claims,
                "inputs": [arg.name for arg in node.all_input_nodes],
            }
        )
    return records


# ---------------------------------------------------------------------- diff
@dataclass(frozen=True)
class GraphDiff:
    """What a rewrite changed: node names added and removed, and nodes whose inputs changed."""

    added: list[dict[str, Any]]
    removed: list[str]
    rewired: list[tuple[str, list[str], list[str]]]

    def by_site(self) -> dict[str, list[dict[str, Any]]]:
        """Added nodes grouped by the site key they adapt (``"(untagged)"`` for others)."""
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.added:
            site = record["adapter"]["site"] if record["adapter"] else "(untagged)"
            out[site].append(record)
        return dict(out)

    def text(self) -> str:
        """A readable listing: per site the nodes added, then rewired and removed nodes."""
        lines = []
        for site, records in self.by_site().items():
            first = records[0]["adapter"] or {}
            who = f"{first.get('method', '?')} rule {first.get('rule', '?')!r}, adapter {first.get('adapter', '?')!r}"
            lines.append(f"+ {site}  [{who}]  {len(records)} nodes")
            for record in records:
                role = record["adapter"]["role"] if record["adapter"] else ""
                lines.append(f"    + {record['id']}  {record['target']}  ({role})  <- {', '.join(record['inputs'])}")
        for name, before, after in self.rewired:
            changed = [f"{b} -> {a}" for b, a in zip(before, after, strict=False) if a != b] or [f"{before} -> {after}"]
            lines.append(f"~ {name}: input {'; '.join(changed)}")
        lines.extend(f"- {name}" for name in self.removed)
        counts = f"{len(self.added)} added, {len(self.rewired)} rewired, {len(self.removed)} removed"
        return "\n".join([f"rewrite diff: {counts}", *lines])


def graph_diff(base: fx.GraphModule, rewritten: fx.GraphModule) -> GraphDiff:
    """Compare a base export graph with the rewritten graph of the same call (nodes by name)."""
    before = {r["id"]: r for r in node_records(base)}
    after = node_records(rewritten)
    names_after = {r["id"] for r in after}
    added = [r for r in after if r["id"] not in before]
    rewired = [
        (r["id"], before[r["id"]]["inputs"], r["inputs"])
        for r in after
        if r["id"] in before and before[r["id"]]["inputs"] != r["inputs"]
    ]
    removed = [name for name in before if name not in names_after]
    return GraphDiff(added, removed, rewired)


def diff_of(model: Any) -> GraphDiff:
    """The rewrite diff of a GraphPeftModel's canonical call."""
    gm, base = graphs_of(model)
    if base is None:
        raise UsageError("a rewrite diff needs a GraphPeftModel (a bare GraphModule has no base graph to compare)")
    return graph_diff(base, gm)
