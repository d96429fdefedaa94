"""The layers, held by the import graph: no cycles, and the worker imports no control-side code.

Every import counts, the ones inside functions too (a lazy import still ties two modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("chalicelib", "worker_ami", "local", "bench")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        edges |= {t for t in targets if t in MODULES and t != name}
    return edges


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _cycles() -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_project() -> None:
    # A parser that found nothing would pass every check below.
    assert "chalicelib.store.missions" in GRAPH["chalicelib.store"]
    assert "local.client" in GRAPH["local.cli"]
    assert "chalicelib.capacity" in GRAPH["chalicelib.scheduler"]


def test_no_import_cycles() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("worker_module", sorted(m for m in MODULES if m.startswith("worker_ami")))
def test_the_worker_imports_no_control_side_code(worker_module: str) -> None:
    reached = _closure(worker_module)
    control = {
        "chalicelib.capacity",  # launching EC2 capacity
        "chalicelib.scheduler",
        "chalicelib.sweeper",
        "chalicelib.results",
        "chalicelib.missions",
        "chalicelib.interruptions",
        "app",
    }
    assert not reached & control, sorted(reached & control)
    assert not {m for m in reached if m.startswith(("local", "bench"))}


def test_nothing_shipped_imports_the_local_runtime() -> None:
    for name in MODULES:
        if name == "app" or name.startswith(("chalicelib", "worker_ami")):
            assert not {m for m in _closure(name) if m.startswith(("local", "bench"))}, name
