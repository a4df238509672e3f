"""No import cycles among the project's modules.

Every ``import`` counts wherever it is written (module level, inside a function, under ``TYPE_CHECKING``),
relative imports are resolved, and modules loaded by name through ``importlib.import_module`` /
``spec_from_file_location`` / ``__import__`` are edges too (a name built as ``f"pipelines.{name}"`` is an
edge to every module under ``pipelines``). The graph holds the first-party packages (``cafe``, and the
``components`` and ``pipelines`` that ``cafe`` loads), so a cycle through a pipeline file is seen.
There is no allow-list: a cycle is fixed by moving the shared code down a layer.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cafe", "components", "pipelines")
LOADERS = {"import_module", "__import__"}


@dataclass(frozen=True)
class Edge:
    target: str
    file: str
    line: int


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """``{"cafe.models.adapter": path, "cafe.models": path/__init__.py, ...}`` for the packages under root."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of ours that ``name`` (a dotted module path) names, or None for a third-party one."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _literal_targets(node: ast.expr, modules: dict[str, Path], root: Path) -> list[str]:
    """Modules named by a loader's argument: a string constant, a path, or an f-string with a literal prefix."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        value = node.value
        if value.endswith(".py"):  # spec_from_file_location(name, "pipelines/training.py")
            path = (root / value).resolve()
            return [m for m, p in modules.items() if p.resolve() == path]
        found = _resolve(value, modules)
        return [found] if found else []
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        prefix = str(node.values[0].value)
        if prefix.endswith("."):
            return [m for m in modules if m.startswith(prefix)]
    return []


def _loader_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path], root: Path) -> list[Edge]:
    """Every first-party module ``module`` imports, with the line that imports it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = str(path.relative_to(root))
    edges: list[Edge] = []

    def add(target: str | None, line: int) -> None:
        if target is not None and target != module:
            edges.append(Edge(target, rel, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_resolve(alias.name, modules), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from pkg import mod`` imports the submodule; ``from pkg import name`` the package itself
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else _resolve(source, modules), node.lineno)
        elif isinstance(node, ast.Call):
            name = _loader_name(node)
            if name in LOADERS and node.args:
                for target in _literal_targets(node.args[0], modules, root):
                    add(target, node.lineno)
            elif name == "spec_from_file_location" and len(node.args) >= 2:
                for target in _literal_targets(node.args[1], modules, root):
                    add(target, node.lineno)
    return edges


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, list[Edge]]:
    modules = module_files(root, packages)
    return {m: imports_of(m, p, modules, root) for m, p in modules.items()}


def _components(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative) with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted({e.target for e in graph[start]})))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    members = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.append(member)
                        if member == node:
                            break
                    if len(members) > 1:
                        found.append(sorted(members))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted({e.target for e in graph.get(child, [])}))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _cycle_in(component: list[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """One concrete cycle through the component's first module, as the edges that make it."""
    members, start = set(component), component[0]
    # breadth-first from start back to start, inside the component: the shortest such cycle
    previous: dict[str, tuple[str, Edge]] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target not in members:
                    continue
                if edge.target == start:
                    path = [edge]
                    while node != start:
                        node, step = previous[node]
                        path.append(step)
                    return [Edge(e.target, e.file, e.line) for e in reversed(path)]
                if edge.target not in previous:
                    previous[edge.target] = (node, edge)
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # cannot happen in a strongly connected component


def find_cycles(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """One readable line per import cycle: ``a -> b (a.py:3) -> a (b.py:7)``."""
    graph = import_graph(root, packages)
    lines = []
    for component in _components(graph):
        cycle = _cycle_in(component, graph)
        chain = " -> ".join(f"{e.target} ({e.file}:{e.line})" for e in cycle)
        extra = f" [{len(component)} modules in this cycle: {', '.join(component)}]" if len(component) > len(cycle) else ""
        lines.append(f"{component[0]} -> {chain}{extra}")
    return sorted(lines)


def test_no_import_cycles():
    cycles = find_cycles(ROOT)
    assert not cycles, ("import cycles (move the shared code into a module both can import):\n  "
                        + "\n  ".join(cycles))


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import helper\n",
        "pkg/b.py": "def helper():\n    from pkg import a\n    return a\n",
        "pkg/c.py": "import pkg.a\n",  # imports into the cycle, is not part of it
    })
    cycles = find_cycles(root, ("pkg",))
    assert cycles == ["pkg.a -> pkg.b (pkg/a.py:1) -> pkg.a (pkg/b.py:2)"]


def test_checker_resolves_relative_and_type_checking_imports(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .x import X\n",
        "pkg/sub/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..y import Y\nX = 1\n",
        "pkg/y.py": "from . import sub\n",
    })
    assert find_cycles(root, ("pkg",)) == [
        "pkg.sub -> pkg.sub.x (pkg/sub/__init__.py:1) -> pkg.y (pkg/sub/x.py:3) -> pkg.sub (pkg/y.py:1)"]


def test_checker_sees_modules_loaded_with_importlib(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/cli.py": "import importlib\ndef load(name):\n    return importlib.import_module(f'plugins.{name}')\n",
        "plugins/__init__.py": "",
        "plugins/one.py": "from pkg.cli import load\n",
        "plugins/two.py": "import importlib.util\n"
                          "spec = importlib.util.spec_from_file_location('three', 'plugins/three.py')\n",
        "plugins/three.py": "import plugins.two\n",
    })
    assert find_cycles(root, ("pkg", "plugins")) == [
        "pkg.cli -> plugins.one (pkg/cli.py:3) -> pkg.cli (plugins/one.py:1)",
        "plugins.three -> plugins.two (plugins/three.py:1) -> plugins.three (plugins/two.py:2)"]


def test_checker_passes_an_acyclic_package(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\n",  # a package importing its own modules is no cycle
        "pkg/a.py": "from pkg import b\nA = 1\n",
        "pkg/b.py": "import os, json\n",
    })
    assert find_cycles(root, ("pkg",)) == []
