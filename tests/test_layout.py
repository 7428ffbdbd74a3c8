"""The layout rules of ARCHITECTURE.md section 2 that import-linter does not check, on every run.

- No import cycle between files of our packages. The graph is read from the source with :mod:`ast`, so it sees
  every import, including those inside functions (a lazy import still ties two files together when both
  run), ``from pkg import name`` (an import of ``pkg/__init__.py`` unless ``name`` is a submodule) and modules
  named by a string constant (``importlib.import_module("index.gallery")``, the lazy tables of ``__init__``).
- No source file over 500 lines outside ``tests/``; ``serving/`` holds its wings and at most five loose modules.
- Code and docs speak of the product: no tracker numbers outside ``tests/``.

Run as a script, it prints the graph's size, its cycles and the longest files.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("xmreid", "index", "training", "export", "serving", "benchmarks")
MAX_LINES = 500
SERVING_WINGS = {"api", "core", "embedders", "indexing", "runtime"}
MAX_LOOSE_SERVING_MODULES = 5
_TRACKER = re.compile(r"\bissues? #?[0-9]+", re.IGNORECASE)


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of ``packages`` (a package is its ``__init__``)."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports, anywhere in its file."""
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
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)  # a name defined in base runs base/__init__
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules \
                and "." in node.value:
            found.add(node.value)  # a submodule imported by name
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    modules = module_files(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan's algorithm)."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
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
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index_of:
            visit(node)
    return out


def tracked(pattern: str) -> list[Path]:
    """Files git tracks (and untracked ones it does not ignore) matching ``pattern``."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", pattern],
                         cwd=ROOT, capture_output=True, check=True)
    return [ROOT / name for name in sorted(set(out.stdout.decode().split("\0"))) if name and (ROOT / name).exists()]


def long_files(limit: int = MAX_LINES) -> dict[str, int]:
    lengths = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
               for p in module_files().values()}
    return {name: n for name, n in lengths.items() if n > limit}


def test_the_graph_sees_lazy_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "index"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import importlib\n_LAZY = {'A': 'index.a'}\n")
    (pkg / "a.py").write_text("def f():\n    from index.b import g\n")
    (pkg / "b.py").write_text("from index import c, NAME\n")
    (pkg / "c.py").write_text("")
    graph = import_graph(tmp_path, ("index",))
    assert graph == {"index": {"index.a"}, "index.a": {"index.b"}, "index.b": {"index", "index.c"}, "index.c": set()}
    assert cycles(graph) == [["index", "index.a", "index.b"]]


def test_no_import_cycle_between_files() -> None:
    graph = import_graph()
    assert graph["index"] >= {"index.errors"} and "serving.app" in graph, "the graph was not read"
    assert cycles(graph) == []


def test_no_source_file_over_the_limit() -> None:
    assert long_files() == {}


def test_serving_is_in_wings() -> None:
    serving = ROOT / "serving"
    wings = {p.name for p in serving.iterdir() if (p / "__init__.py").is_file()}
    loose = sorted(p.name for p in serving.glob("*.py"))
    assert wings >= SERVING_WINGS, f"missing wings: {sorted(SERVING_WINGS - wings)}"
    assert len(loose) <= MAX_LOOSE_SERVING_MODULES, loose


@pytest.mark.parametrize("pattern", ["*.py", "*.md"])
def test_no_tracker_numbers_outside_tests(pattern: str) -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in tracked(pattern) if p.relative_to(ROOT).parts[0] != "tests"
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if _TRACKER.search(line)]
    assert hits == []


if __name__ == "__main__":
    graph = import_graph()
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges, {len(found)} cycle(s)")
    for component in found:
        print("cycle:", " <-> ".join(component))
    for name, n in sorted(long_files(limit=0).items(), key=lambda item: -item[1])[:5]:
        print(f"{n:5d} {name}")
    sys.exit(1 if found or long_files() else 0)
