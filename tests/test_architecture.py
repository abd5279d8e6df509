"""Structural checks of the package: its import graph has no cycle, the layers import only
downwards, and a method's name appears only in the registry and the method's own module."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

import determined_dsat
from determined_dsat.methods import registry

PACKAGE = pathlib.Path(determined_dsat.__file__).parent
NAME = "determined_dsat"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """The package's modules that ``path`` imports (at any depth of the file)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == NAME or name.startswith(NAME + ".")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (names that are modules, not attributes)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        module: {name for name in _imports(path, module) if name in files and name != module}
        for module, path in files.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_import_graph_is_acyclic() -> None:
    graph = import_graph()
    # Package __init__ modules that only re-export would make every import of a submodule
    # look like an edge back to the package; they hold no logic, so leave them out.
    root = {m: {d for d in deps if d != NAME} for m, deps in graph.items() if m != NAME}
    assert len(root) > 40  # the walk found the package
    assert _cycle(root) is None, " -> ".join(_cycle(root) or [])


def test_a_cycle_would_be_found() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


FORBIDDEN = {
    # layer: packages it must not import
    "methods": ("runners", "report", "store", "integration", "cli", "cli_parser", "settings"),
    "space": ("trials", "methods", "runners", "report", "store", "integration", "settings"),
    "trials": ("methods", "runners", "report", "store", "integration", "settings"),
    "store": ("methods", "runners", "report", "integration"),
    "report": ("runners", "methods", "integration"),
    "integration": ("runners", "methods", "report", "store"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    bad = []
    for module, deps in import_graph().items():
        if not module.startswith(f"{NAME}.{layer}"):
            continue
        for dep in deps:
            top = dep.removeprefix(NAME + ".").split(".")[0]
            if top in FORBIDDEN[layer]:
                bad.append(f"{module} imports {dep}")
    assert not bad, "\n".join(bad)


def test_method_names_appear_only_in_the_registry_and_their_modules() -> None:
    names = registry.methods()
    assert len(names) >= 4
    own = {
        name: pathlib.Path(spec.policy.__module__.replace(".", "/") + ".py").name
        for name, spec in names.items()
    }
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for name, home in own.items():
            if path.name in (home, "registry.py"):
                continue
            if re.search(rf"""["']{re.escape(name)}["']""", text):
                offenders.append(f"{path.relative_to(PACKAGE)} names {name!r}")
    assert not offenders, "\n".join(offenders)
