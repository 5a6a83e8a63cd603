"""Architecture rules the tree keeps: no import cycles (type-only imports included), small modules,
and the web framework confined to the HTTP layer."""

from __future__ import annotations

import ast
from pathlib import Path

import openhqm

SRC = Path(openhqm.__file__).parent
MAX_MODULE_LINES = 400
WEB_FRAMEWORKS = ("starlette", "fastapi")
KNOWN_CYCLES: list[list[str]] = []
KNOWN_LONG_MODULES: frozenset[str] = frozenset()


def _module_name(path: Path) -> str:
    parts = ["openhqm", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def _imported_names(name: str) -> set[str]:
    """Every module `name` imports, wherever the import statement stands (TYPE_CHECKING included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import name` the module.
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(submodules if len(submodules) == len(node.names) else {base, *submodules})
    return found


def _graph() -> dict[str, set[str]]:
    return {name: {other for other in _imported_names(name) if other in MODULES and other != name}
            for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_module_takes_part_in_an_import_cycle() -> None:
    assert [cycle for cycle in _cycles(_graph()) if cycle not in KNOWN_CYCLES] == []


def test_no_module_is_longer_than_the_limit() -> None:
    lines = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lines.items() if n > MAX_MODULE_LINES and name not in KNOWN_LONG_MODULES} == {}


def test_only_the_http_layer_imports_the_web_framework() -> None:
    outside = {name for name in MODULES if not name.startswith("openhqm.http")
               and any(imported.split(".")[0] in WEB_FRAMEWORKS for imported in _imported_names(name))}
    assert outside == set()
