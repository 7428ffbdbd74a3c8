"""The shape of the ``index`` package: no import cycle between its files, no file over 500 lines.

The import graph is read from the source with :mod:`ast`, so it sees every import, including the ones
inside functions (lazy imports still form a cycle when both ends run), ``from index import X`` (an
import of ``index/__init__.py``, which itself imports lazily by module name) and modules named by a
string constant (``importlib.import_module("index.gallery")``). Run as a script, it prints the graph's
cycles (none expected) and the longest files.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "index"
MAX_LINES = 500
ROOT = Path(__file__).resolve().parents[2]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of the package (``index`` is its ``__init__``)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .x import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)  # ``from index import X`` runs index/__init__.py
            found.update(f"{base}.{alias.name}" for alias in node.names)  # X may be a submodule
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value in modules:
            found.add(node.value)  # a submodule imported by name (importlib.import_module)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a module importing itself)."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index_of[node] = low[node] = len(index_of)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index_of:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index_of[nxt])
        if low[node] == index_of[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index_of:
            visit(node)
    return out


def long_files(root: Path = ROOT, limit: int = MAX_LINES) -> dict[str, int]:
    lengths = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines())
               for p in module_files(root).values()}
    return {name: n for name, n in lengths.items() if n > limit}


def test_no_import_cycle_between_the_files_of_index() -> None:
    graph = import_graph()
    assert "index.gallery" in graph and graph["index"] >= {"index.errors", "index.gallery"}, "the graph was not read"
    assert cycles(graph) == []


def test_the_graph_sees_lazy_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import importlib\n_LAZY = {'A': 'index.a'}\n")
    (pkg / "a.py").write_text("def f():\n    from index.b import g\n")
    (pkg / "b.py").write_text("from index import c\n")
    (pkg / "c.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph == {"index": {"index.a"}, "index.a": {"index.b"}, "index.b": {"index", "index.c"}, "index.c": set()}
    assert cycles(graph) == [["index", "index.a", "index.b"]]


def test_no_file_of_index_is_over_500_lines() -> None:
    assert long_files() == {}


if __name__ == "__main__":
    graph = import_graph()
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges, {len(found)} cycle(s)")
    for component in found:
        print("cycle:", " <-> ".join(component))
    for name, n in sorted(long_files(limit=0).items(), key=lambda item: -item[1])[:5]:
        print(f"{n:5d} {name}")
    sys.exit(1 if found or long_files() else 0)
