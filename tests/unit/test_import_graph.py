"""The project's modules import each other without a cycle, and udfs/ stays plain Python.

The import graph is read from the source with `ast`, not by importing anything. Every import
statement counts as an edge: at module level, under `if TYPE_CHECKING:`, and inside a function.
A deferred or type-only import hides a cycle from the interpreter but not from a reader: the two
modules still depend on each other, and whoever moves the import to the top (or evaluates the
annotations) meets the cycle. An import of `a.b.c` also runs `a` and `a.b` (their __init__.py),
so those count too, unless they are packages of the importing module itself (already running).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

PROJECT = Path(__file__).resolve().parents[2]
PACKAGES = ("streaming", "udfs", "bench")


class Edge(NamedTuple):
    target: str
    where: str  # path:line of the import statement


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Module name -> its file, for every .py file under the packages."""
    return {module_name(root, path): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def imports_of(name: str, path: Path) -> list[tuple[str, int, list[str]]]:
    """(module named, line, the names taken from it) of every import statement in the file, at any depth."""
    found = []
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package, one level up per extra dot
                anchor = package[:len(package) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, node.lineno, [alias.name for alias in node.names]))
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, list[Edge]]:
    """Module -> the modules of `packages` its imports run (see the module's docstring)."""
    modules = modules_of(root, packages)
    graph: dict[str, list[Edge]] = {}
    for name, path in modules.items():
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges = []
        for imported, line, names in imports_of(name, path):
            # `from a.b import c` imports the module a.b.c when there is one.
            targets = [f"{imported}.{n}" for n in names if f"{imported}.{n}" in modules] or [imported]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    run = ".".join(parts[:i])
                    if run in modules and run != name and (run == target or run not in own_packages):
                        edges.append(Edge(run, f"{path.relative_to(root)}:{line}"))
        graph[name] = edges
    return graph


def cycles(graph: dict[str, list[Edge]]) -> list[list[tuple[str, str]]]:
    """One cycle, as (module, where it imports the next) pairs, per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph[node]:
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for group in groups:
        start = min(group)
        # Breadth-first within the group, from `start` back to it: a shortest cycle through it.
        previous: dict[str, tuple[str, str]] = {}
        frontier = [start]
        while start not in previous:
            following = []
            for node in frontier:
                for edge in graph[node]:
                    if edge.target in group and edge.target not in previous:
                        previous[edge.target] = (node, edge.where)
                        following.append(edge.target)
            frontier = following
        cycle = []
        node = start
        while True:
            before, where = previous[node]
            cycle.append((before, where))
            node = before
            if node == start:
                break
        found.append(cycle[::-1])
    return found


def describe(cycle: list[tuple[str, str]]) -> str:
    return " -> ".join(f"{module} ({where})" for module, where in cycle) + f" -> {cycle[0][0]}"


def test_the_project_has_no_import_cycle():
    graph = import_graph(PROJECT)
    assert {"udfs.wire", "streaming.job.graph", "bench.run_bench"} <= set(graph)  # it read the project
    assert sum(map(len, graph.values())) > 100
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(cycle) for cycle in found)


def test_a_cycle_is_found_through_deferred_type_only_and_package_imports(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg import b\n",  # inside a function
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.c import C\n",
        "pkg/sub/__init__.py": "from pkg.sub.d import D\n",  # importing pkg.sub.c runs this first
        "pkg/sub/c.py": "C = 1\n",
        "pkg/sub/d.py": "from ..a import f\nD = 2\n",  # relative
        "pkg/fine.py": "import pkg.sub.c\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("pkg",))
    [cycle] = cycles(graph)
    assert [module for module, _ in cycle] == ["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.d"]
    assert describe(cycle).startswith("pkg.a (pkg/a.py:2) -> pkg.b (pkg/b.py:3) -> pkg.sub (pkg/sub/__init__.py:1)")
    # A package's own modules do not depend on it for being in it.
    assert "pkg.sub" not in {edge.target for edge in graph["pkg.sub.c"]}


def test_udfs_imports_no_pyflink_and_nothing_of_the_job():
    """udfs/ is plain Python, tested without a JVM (DESIGN.md): it imports no pyflink, at any depth,
    and nothing of streaming/ or bench/, which could bring it in."""
    offending = []
    for name, path in modules_of(PROJECT, ("udfs",)).items():
        for imported, line, _ in imports_of(name, path):
            if imported.split(".")[0] in ("pyflink", "streaming", "bench"):
                offending.append(f"{path.relative_to(PROJECT)}:{line} imports {imported}")
    assert len(modules_of(PROJECT, ("udfs",))) > 10
    assert not offending, "\n".join(offending)


# A module a newcomer can read in one sitting: split a longer one by capability (CONTRIBUTING.md).
MAX_MODULE_LINES = 500


def test_no_module_of_streaming_or_udfs_is_over_500_lines():
    modules = modules_of(PROJECT, ("streaming", "udfs"))
    assert len(modules) > 20  # it read the project
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules.items()}
    assert {name: lines for name, lines in lengths.items() if lines > MAX_MODULE_LINES} == {}
