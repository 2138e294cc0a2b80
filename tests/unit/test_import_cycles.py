"""No import cycle between Kiln's modules, counting every import that runs (not TYPE_CHECKING ones).

A cycle loads only thanks to the order modules happen to be imported in; the first refactor that
changes that order breaks it. Imports inside functions count too: they hide a cycle, not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kiln

PACKAGE = Path(kiln.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(path: Path, modules: set[str]) -> set[str]:
    """The kiln modules `path` imports: `from kiln.x import y` means kiln.x.y when that is a module."""
    found: set[str] = set()
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    # Importing kiln.a.b runs kiln.a's __init__ too: that edge is real, except from inside kiln.a,
    # whose own package Python has started to load before any of its modules.
    closed = set()
    for target in found:
        parts = target.split(".")
        closed.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    own_packages = {name.rsplit(".", i)[0] for i in range(1, name.count("."))}
    return {m for m in closed if m in modules and m != name and m not in own_packages}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path of modules, or None (depth-first search with colours)."""
    done: set[str] = set()
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        if node in stack:
            return [*stack[stack.index(node) :], node]
        if node in done:
            return None
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if cycle := walk(target):
                return cycle
        stack.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := walk(start):
            return cycle
    return None


def test_no_module_of_kiln_imports_itself_through_others():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_the_package_init_behind_a_submodule_import():
    graph = import_graph()
    assert {"kiln.backup", "kiln.backup.base"} <= graph["kiln.environments"]
    assert "kiln.backup" not in graph["kiln.backup.base"]  # its own package: loaded first anyway
