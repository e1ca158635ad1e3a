"""No import cycles among the modules of `tlv_jax`: the data flows one way, and so do the imports.

Every import counts, at module level or inside a function (a lazy import still makes the two modules depend on each
other). `from package import name` is an import of the submodule when `name` is one, of the package otherwise;
relative imports are resolved against the importing module.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tlv_jax"


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file for every module of `package` (a package is its __init__.py)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of `known` that `source` (the text of `module`) imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(_known_prefix(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else _known_prefix(base, known))
    found.discard(None)
    found.discard(module)
    return found


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _known_prefix(name: str, known: set[str]) -> str | None:
    """`name` itself, or the longest leading part of it that is a module here (`import a.b.c` of a function c)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    known = set(names)
    return {m: imported(p.read_text(), m, p.name == "__init__.py", known) for m, p in names.items()}


def cycles(graph: dict[str, set[str]]) -> Iterator[tuple[list[str], list[str]]]:
    """Each group of mutually importing modules (Tarjan's strongly connected components), sorted, with one shortest
    cycle through the group's first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    for group in sorted(groups, key=min):
        yield sorted(group), _shortest_cycle(graph, group, min(group))


def _shortest_cycle(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """Breadth-first from `start` back to it, inside `group`."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle of {sorted(group)}")


def test_tlv_jax_has_no_import_cycles():
    found = [f"{', '.join(group)}: {' -> '.join(cycle)}" for group, cycle in cycles(import_graph())]
    assert not found, "modules that import each other:\n  " + "\n  ".join(found)


def test_the_graph_sees_lazy_relative_and_submodule_imports():
    known = {"pkg", "pkg.a", "pkg.sub", "pkg.sub.b", "pkg.sub.c"}
    source = """
from __future__ import annotations
import pkg.sub.b
from pkg import a, helper
from . import c
from ..a import thing

def later():
    from pkg.sub.c import name
"""
    assert imported(source, "pkg.sub.b", False, known) == {"pkg.a", "pkg", "pkg.sub.c"}
    assert imported("from .b import x\nfrom . import c", "pkg.sub", True, known) == {"pkg.sub.b", "pkg.sub.c"}


def test_a_cycle_is_reported_by_its_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert list(cycles(graph)) == [(["a", "b", "c"], ["a", "b", "c", "a"])]
