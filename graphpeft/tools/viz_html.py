"""The self-contained HTML graph viewer (one file: inline data, CSS and JS; no network).

The page shows a module-level overview that expands module by module down to
ops, highlights adapter subgraphs, overlays the rewrite diff (added nodes,
rewired edges) and searches by FQN. JS errors are written into
``#gp-errors`` and the rendered item count into ``body[data-rendered]``, so a
headless browser's DOM dump tells whether the page worked.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

from .graph_records import graph_diff, graphs_of, module_classes, node_records

TEMPLATE = "viz_template.html"


def page_data(obj: Any, open_diff: bool = False) -> dict[str, Any]:
    """The JSON the page renders: FX node records (with diff flags), module classes, diff text."""
    gm, base = graphs_of(obj)
    records = node_records(gm)
    diff = graph_diff(base, gm) if base is not None else None
    added = {r["id"] for r in diff.added} if diff else set()
    rewired = (
        {name: [src for src in after if src not in before] for name, before, after in diff.rewired} if diff else {}
    )
    for record in records:
        record["added"] = record["id"] in added
        record["rewired"] = rewired.get(record["id"])
    root = getattr(obj, "base_model", gm)
    return {
        "title": type(root).__name__,
        "classes": module_classes(gm),
        "nodes": records,
        "diff": diff.text() if diff else None,
        "openDiff": open_diff,
    }


def to_html(obj: Any, title: str | None = None, open_diff: bool = False) -> str:
    """The viewer page for a GraphPeftModel (with the rewrite diff) or a GraphModule."""
    data = page_data(obj, open_diff)
    template = resources.files("graphpeft.tools").joinpath(TEMPLATE).read_text(encoding="utf-8")
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    name = html.escape(title or f"{data['title']} graph")
    return template.replace("__GRAPHPEFT_TITLE__", name).replace("__GRAPHPEFT_DATA__", payload)
