"""The package's shape: imports never lead back to where they started, files stay small, the top stays short.

The import graph is read from the source (the AST), so it holds what runs: imports at module level and inside
functions alike. Imports under ``if TYPE_CHECKING:`` never run and are left out; relative imports are resolved;
``from pkg import name`` is an import of the module ``pkg.name`` when there is one, else of ``pkg``. The package
root counts as a module: it imports every stage, so nothing inside may import it. import-linter's layer
contracts (pyproject's ``[tool.importlinter]``, run by ``make test``) say which way imports go; this test says
that no import, wherever it sits, closes a loop.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "graphpeft"
MAX_LINES = 400
MAX_TOP_ENTRIES = 12


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``package`` (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def run_time_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, at any depth, except those that only run under ``TYPE_CHECKING``."""
    pending = list(ast.iter_child_nodes(tree))
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def imported_modules(name: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that import statement ``node`` in module ``name`` (file ``path``) loads."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = set()
    for target in targets:
        module = target
        while module and module not in modules:  # ``import a.b.c`` of a name inside a module: the module
            module = module.rpartition(".")[0]
        if module:
            found.add(module)
    return found


def import_graph(package: Path) -> nx.DiGraph:
    """Module -> the modules of the same package it imports when it runs."""
    modules = module_files(package)
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for node in run_time_imports(ast.parse(path.read_text(encoding="utf-8"))):
            graph.add_edges_from(
                (name, target) for target in imported_modules(name, path, node, modules) if target != name
            )
    return graph


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """The groups of modules that import each other (directly or through others), each sorted."""
    return sorted(sorted(group) for group in nx.strongly_connected_components(graph) if len(group) > 1)


# ---------------------------------------------------------------------- the package
def test_no_import_cycles_among_graphpeft_modules():
    assert cycles(import_graph(PACKAGE)) == []


def test_no_module_imports_the_package_root():
    graph = import_graph(PACKAGE)
    assert sorted(graph.predecessors(PACKAGE.name)) == []


def test_no_file_under_graphpeft_is_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_package_top_holds_at_most_12_entries():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= MAX_TOP_ENTRIES, entries


# ---------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "pkg"


def test_a_function_level_import_that_closes_a_loop_is_a_cycle(tmp_path):
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import thing\n",
            "pkg/b.py": "def thing():\n    from . import a\n    return a\n",
        },
    )
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.b"]]


def test_an_import_under_type_checking_is_left_out(tmp_path):
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import thing\n",
            "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import other\nthing = 1\n",
        },
    )
    assert cycles(import_graph(package)) == []


def test_from_package_import_name_resolves_to_the_submodule_of_that_name(tmp_path):
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "VALUE = 1\n",
            "pkg/sub/leaf.py": "",
            "pkg/user.py": "from .sub import leaf, VALUE\nfrom ..pkg.sub.leaf import x\n",
        },
    )
    assert sorted(import_graph(package).successors("pkg.user")) == ["pkg.sub", "pkg.sub.leaf"]
