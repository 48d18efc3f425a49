"""The layering of docs/architecture.md, read off the source: imports point one way only and no module imports,
directly or through others, a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("affect_core", "tuning", "flows", "affect_cli", "affect_services")
# What each package may import (besides itself and third-party libraries).
ALLOWED = {
    "affect_core": set(),
    "tuning": {"affect_core"},
    "flows": {"affect_core", "tuning"},
    "affect_services": {"affect_core"},
    "affect_cli": {"affect_core", "tuning", "flows", "affect_services"},
}
FORBIDDEN_IN_CORE = ("ray", "prefect")
# Inside affect_core: the data formats sit below everything else (video, scoring, training read them), so
# affect_core.data imports only itself and these. A layout that needs a higher part (the video layout) is provided
# from above: it registers itself with affect_core.data.layouts.provided.
DATA_PACKAGE = "affect_core.data"
DATA_MAY_IMPORT = ("affect_core.errors", "affect_core.storage")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions; ``from pkg import sub`` counts as sub."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & set(known)
            names.update(subs if len(subs) == len(node.names) else {node.module, *subs})
    return names


def test_imports_point_one_way():
    known = modules()
    wrong = []
    for name, path in known.items():
        package = name.split(".")[0]
        for imported in imports(path, known):
            top = imported.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{name} imports {imported}")
            if package == "affect_core" and top in FORBIDDEN_IN_CORE:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_data_imports_nothing_above_it():
    known = modules()
    wrong = []
    for name, path in known.items():
        if name != DATA_PACKAGE and not name.startswith(DATA_PACKAGE + "."):
            continue
        for imported in imports(path, known):
            inside = imported == DATA_PACKAGE or imported.startswith(DATA_PACKAGE + ".")
            if imported.startswith("affect_core") and imported != "affect_core" and not inside:
                if imported not in DATA_MAY_IMPORT:
                    wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_no_import_circles():
    known = modules()
    graph = {name: {i for i in imports(path, known) if i in known and i != name} for name, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, circles
