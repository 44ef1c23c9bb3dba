"""Graph views: networkx graphs of an (adapted) export graph, a rewrite diff, and DOT text.

``to_networkx(model, level="op")`` has one node per FX node; ``level="module"``
collapses the ops of each module (the innermost entry of ``nn_module_stack``,
or its ancestor at ``depth``) into one node. Nodes graphpeft inserted carry
``adapter`` attributes (site, adapter, rule, method, role) from
``node.meta["graphpeft.adapter_node"]``; claimed site nodes carry ``claims``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from torch import fx, nn

from ..errors import UsageError
from ..io.output_file import check_output_path, write_text
from ..rewrite.claims import ADAPTER_NODE, CLAIMS
from ..tracing.graph_utils import clone_graph

ROOT = "<root>"
LEVELS = ("op", "module")


def graphs_of(obj: Any) -> tuple[fx.GraphModule, fx.GraphModule | None]:
    """``(graph, base graph)``: for a GraphPeftModel, its active adapters placed on a copy of the
    base graph of the canonical call (the rewrite its forward runs, without a second export) and
    that base graph; for a GraphModule, itself and None."""
    from ..runtime.model import GraphPeftModel

    if isinstance(obj, GraphPeftModel):
        base = obj._base_graph()
        rewritten = clone_graph(base)  # shares the base's tensors
        adapters = obj._graph_adapters()
        if adapters:
            obj._rewrite(rewritten, adapters, obj.training)
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


def _classes(gm: fx.GraphModule) -> dict[str, str]:
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
    classes = _classes(gm)
    known = set(classes)
    records = []
    for node in gm.graph.nodes:
        adapter = node.meta.get(ADAPTER_NODE)
        claims = [f"{c.adapter}:{c.rule}:{c.method}" for c in node.meta.get(CLAIMS) or []]
        records.append({
            "id": node.name,
            "op": node.op,
            "target": _target(node),
            "kind": _kind(node),
            "stack": module_stack(node, known),
            "adapter": dict(adapter) if adapter else None,
            "claims": claims,
            "inputs": [arg.name for arg in node.all_input_nodes],
        })
    return records


def to_networkx(obj: Any, level: str = "op", depth: int | None = None) -> nx.DiGraph:
    """A ``networkx.DiGraph`` of the graph of a GraphPeftModel (its rewritten graph) or a GraphModule.

    ``level="op"``: one node per FX node, attributes ``op``, ``target``, ``kind``
    (input/output/param/op/site/adapter), ``module`` (innermost FQN, "" at the root),
    ``stack``, ``adapter`` (dict or None) and ``claims``. ``level="module"``: one node per
    module (innermost, or the ancestor at ``depth`` components of the stack), attributes
    ``cls``, ``ops``, ``adapters`` (``"adapter:rule"`` strings) and ``kind``; inputs and
    outputs stay single nodes, root-level ops collapse into ``"<root>"``.
    """
    if level not in LEVELS:
        raise UsageError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise UsageError(f"depth must be a positive integer or None, got {depth!r}")
    gm, _ = graphs_of(obj)
    graph = nx.DiGraph(level="op")
    for record in node_records(gm):
        attrs = {k: v for k, v in record.items() if k not in ("id", "inputs")}
        attrs["module"] = record["stack"][-1] if record["stack"] else ""
        graph.add_node(record["id"], label=record["id"], **attrs)
        for source in record["inputs"]:
            graph.add_edge(source, record["id"])
    return collapse(graph, _classes(gm), depth) if level == "module" else graph


def collapse(graph: nx.DiGraph, classes: dict[str, str], depth: int | None = None) -> nx.DiGraph:
    """Group an op-level graph's nodes by module; edge attribute ``count`` = FX edges merged."""
    group: dict[str, str] = {}
    out = nx.DiGraph(level="module")
    for name, data in graph.nodes(data=True):
        stack = data["stack"]
        if data["kind"] in ("input", "output"):
            group[name] = name
            out.add_node(name, label=name, cls="", ops=1, adapters=[], kind=data["kind"])
            continue
        key = (stack[-1] if depth is None else stack[min(depth, len(stack)) - 1]) if stack else ROOT
        group[name] = key
        if key not in out:
            out.add_node(key, label=key, cls=classes.get(key, ""), ops=0, adapters=[], kind="module")
        entry = out.nodes[key]
        entry["ops"] += 1
        adapter = data["adapter"]
        if adapter:
            tag = f"{adapter['adapter']}:{adapter['rule']}"
            if tag not in entry["adapters"]:
                entry["adapters"].append(tag)
            entry["kind"] = "adapted"
    for source, target in graph.edges():
        a, b = group[source], group[target]
        if a != b:
            count = out.edges[a, b]["count"] + 1 if out.has_edge(a, b) else 1
            out.add_edge(a, b, count=count)
    return out


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
            changed = [f"{b} -> {a}" for b, a in zip(before, after) if a != b] or [f"{before} -> {after}"]
            lines.append(f"~ {name}: input {'; '.join(changed)}")
        for name in self.removed:
            lines.append(f"- {name}")
        counts = f"{len(self.added)} added, {len(self.rewired)} rewired, {len(self.removed)} removed"
        return "\n".join([f"rewrite diff: {counts}"] + lines)


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


# ---------------------------------------------------------------------- DOT
_FILL = {"adapter": "#b7ebb0", "site": "#ffe08a", "adapted": "#d9f5d3", "input": "#e3e3e3",
         "output": "#e3e3e3", "param": "#f4f4f4", "op": "#ffffff", "module": "#eef3fb"}


def dot_quote(text: Any) -> str:
    """A DOT double-quoted string (backslashes, quotes and newlines escaped)."""
    body = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{body}"'


def _dot_label(name: str, data: dict[str, Any]) -> str:
    if "target" in data:
        lines = [name, data["target"]]
        if data.get("adapter"):
            lines.append(f"{data['adapter']['rule']} / {data['adapter']['adapter']}")
        lines.extend(data.get("claims") or [])
        return "\n".join(lines)
    lines = [name] + ([f"({data['cls']})"] if data.get("cls") else [])
    return "\n".join(lines + list(data.get("adapters") or []))


def to_dot(graph: nx.DiGraph) -> str:
    """DOT text of a graph from :func:`to_networkx`; op-level graphs cluster ops by module."""
    lines = ["digraph graphpeft {", "  rankdir=TB;", '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    clusters: dict[str, list[str]] = defaultdict(list)
    for name, data in graph.nodes(data=True):
        attrs = f"label={dot_quote(_dot_label(name, data))}, fillcolor={dot_quote(_FILL.get(data.get('kind'), '#ffffff'))}"
        if data.get("kind") in ("adapter", "adapted"):
            attrs += ', color="#2e8b2e", penwidth=2'
        clusters[data.get("module", "") if graph.graph.get("level") == "op" else ""].append(f"{dot_quote(name)} [{attrs}];")
    for index, (module, statements) in enumerate(sorted(clusters.items())):
        if not module:
            lines.extend("  " + s for s in statements)
            continue
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f"    label={dot_quote(module)}; style=dashed;")
        lines.extend("    " + s for s in statements)
        lines.append("  }")
    for source, target in graph.edges():
        lines.append(f"  {dot_quote(source)} -> {dot_quote(target)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write(obj: Any, path: str | Path, level: str = "op") -> Path:
    """Write the graph as ``.dot`` (at ``level``) or as the ``.html`` viewer, chosen by suffix. A path that
    cannot be written is a :class:`~graphpeft.errors.SaveError`, raised before the graph is built."""
    path = check_output_path(path)
    if path.suffix == ".dot":
        text = to_dot(to_networkx(obj, level=level))
    elif path.suffix in (".html", ".htm"):
        from .viz_html import to_html

        text = to_html(obj)
    else:
        raise UsageError(f"cannot tell the format of {str(path)!r}: name the output *.html or *.dot")
    return write_text(path, text)
