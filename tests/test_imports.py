"""The package's import graph has no circles, counting imports inside functions too (parsed with ``ast``, not run)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iiet"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The ``modules`` that the module ``name`` imports anywhere in ``source``: top level, functions, classes.

    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module, else as importing ``pkg``;
    ``import a.b.c`` as importing the longest prefix that is one of ``modules``.
    """
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..mod import y
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p.read_text(), module_name(p), p.name == "__init__.py", modules)
            for p in paths}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The module sets that import each other (strongly connected components of more than one module, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_function_level_and_relative_imports_count():
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    source = "from . import b\nfrom .sub.c import thing\n\ndef f():\n    import pkg.sub\n    from pkg import helper\n"
    assert imported_modules(source, "pkg.a", False, modules) == {"pkg.b", "pkg.sub.c", "pkg.sub", "pkg"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_circles():
    graph = import_graph()
    assert {"iiet.cli", "iiet.train.trainer", "iiet.models.modeling_iiet"} <= graph.keys()
    cycles = find_cycles(graph)
    assert not cycles, f"import circles (each set of modules imports itself through the others): {cycles}"
