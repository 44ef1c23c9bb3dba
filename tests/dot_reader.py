"""A small reader for the DOT subset graphpeft writes (digraph, subgraphs, node/edge/attr statements).

It raises ``SyntaxError`` on anything outside the DOT grammar, so a test can check that
written DOT is well formed without graphviz installed.
"""

from __future__ import annotations

import re
from itertools import pairwise

_TOKEN = re.compile(
    r'\s*(?:(->)|([{}\[\];,=])|"((?:[^"\\]|\\.)*)"|([A-Za-z_][A-Za-z_0-9.]*|-?\d+(?:\.\d+)?))', re.DOTALL
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if not found:
            raise SyntaxError(f"unexpected character at {pos}: {text[pos : pos + 20]!r}")
        arrow, punct, quoted, bare = found.groups()
        if arrow:
            out.append(("op", "->"))
        elif punct:
            out.append(("op", punct))
        elif quoted is not None:
            out.append(("id", re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), quoted)))
        else:
            out.append(("id", bare))
        pos = found.end()
    return out


def read_dot(text: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
    """``(nodes with attributes, edges)`` of a DOT digraph."""
    tokens = _tokens(text)
    nodes: dict[str, dict[str, str]] = {}
    edges: list[tuple[str, str]] = []
    pos = 0

    def expect(kind: str, value: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens) or tokens[pos][0] != kind or (value is not None and tokens[pos][1] != value):
            raise SyntaxError(f"expected {value or kind} at token {pos}: {tokens[pos : pos + 3]}")
        pos += 1
        return tokens[pos - 1][1]

    def peek(value: str) -> bool:
        return pos < len(tokens) and tokens[pos] == ("op", value)

    def attrs() -> dict[str, str]:
        out = {}
        if not peek("["):
            return out
        expect("op", "[")
        while not peek("]"):
            key = expect("id")
            expect("op", "=")
            out[key] = expect("id")
            if peek(",") or peek(";"):
                expect("op")
        expect("op", "]")
        return out

    def block() -> None:
        nonlocal pos
        expect("op", "{")
        while not peek("}"):
            if tokens[pos] == ("id", "subgraph"):
                pos += 1
                if tokens[pos][0] == "id":
                    pos += 1
                block()
            elif (
                tokens[pos][1] in ("node", "edge", "graph") and pos + 1 < len(tokens) and tokens[pos + 1] == ("op", "[")
            ):
                pos += 1
                attrs()
            else:
                first = expect("id")
                if peek("="):
                    expect("op", "=")
                    expect("id")
                elif peek("->"):
                    chain = [first]
                    while peek("->"):
                        expect("op", "->")
                        chain.append(expect("id"))
                    attrs()
                    for name in chain:
                        nodes.setdefault(name, {})
                    edges.extend(pairwise(chain))
                else:
                    nodes.setdefault(first, {}).update(attrs())
            if peek(";"):
                expect("op", ";")
        expect("op", "}")

    if tokens[pos] == ("id", "strict"):
        pos += 1
    if expect("id") != "digraph":
        raise SyntaxError("not a digraph")
    if tokens[pos][0] == "id":
        pos += 1
    block()
    if pos != len(tokens):
        raise SyntaxError(f"trailing tokens after the graph: {tokens[pos : pos + 3]}")
    return nodes, edges
