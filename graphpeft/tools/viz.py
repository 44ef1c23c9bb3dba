"""Graph views: networkx graphs of an (adapted) export graph, DOT text, and writing a view to a file.

``to_networkx(model, level="op")`` has one node per FX node; ``level="module"``
collapses the ops of each module (the innermost entry of ``nn_module_stack``,
or its ancestor at ``depth``) into one node. Nodes graphpeft inserted carry
``adapter`` attributes (site, adapter, rule, method, role) from
``node.meta["graphpeft.adapter_node"]``; claimed site nodes carry ``claims``.
The node records and the rewrite diff come from :mod:`.graph_records`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import networkx as nx

from ..errors import UsageError
from ..io.output_file import check_output_path, write_text
from .graph_records import graphs_of, module_classes, node_records
from .viz_html import to_html

ROOT = "<root>"
LEVELS = ("op", "module")


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
    return collapse(graph, module_classes(gm), depth) if level == "module" else graph


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


# ---------------------------------------------------------------------- DOT
_FILL = {
    "adapter": "#b7ebb0",
    "site": "#ffe08a",
    "adapted": "#d9f5d3",
    "input": "#e3e3e3",
    "output": "#e3e3e3",
    "param": "#f4f4f4",
    "op": "#ffffff",
    "module": "#eef3fb",
}


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
    lines = [
        "digraph graphpeft {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    clusters: dict[str, list[str]] = defaultdict(list)
    for name, data in graph.nodes(data=True):
        attrs = (
            f"label={dot_quote(_dot_label(name, data))}, fillcolor={dot_quote(_FILL.get(data.get('kind'), '#ffffff'))}"
        )
        if data.get("kind") in ("adapter", "adapted"):
            attrs += ', color="#2e8b2e", penwidth=2'
        clusters[data.get("module", "") if graph.graph.get("level") == "op" else ""].append(
            f"{dot_quote(name)} [{attrs}];"
        )
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
        text = to_html(obj)
    else:
        raise UsageError(f"cannot tell the format of {str(path)!r}: name the output *.html or *.dot")
    return write_text(path, text)
