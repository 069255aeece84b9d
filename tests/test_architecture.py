"""The shape of the code (docs/design.md): arrows point one way, no circles, no stand-in stubs."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coordinator", "node", "modelcache")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, ast.Module]:
    return {
        module_name(path, root): ast.parse(path.read_text(), str(path))
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    }


def imported(tree: ast.Module, *, top_level_only: bool) -> set[str]:
    """Modules a module imports; with `top_level_only`, not those imported inside functions."""
    nodes: list[ast.AST] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and top_level_only:
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """First-party module -> first-party modules it imports at import time (TYPE_CHECKING included)."""
    trees = sources(root)
    return {name: imported(tree, top_level_only=True) & set(trees) - {name} for name, tree in trees.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done, path = [], set(), []

    def visit(node: str) -> None:
        if node in path:
            found.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    return found


def test_no_import_circle() -> None:
    graph = import_graph(ROOT)
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    assert cycles(graph) == []


def test_the_coordinator_never_imports_the_node() -> None:
    """Anywhere, lazily included: the `modelcache` entry point is what hands `node ...` to the node."""
    upward = {
        name: sorted(m for m in imported(tree, top_level_only=False) if m == "node" or m.startswith("node."))
        for name, tree in sources(ROOT, ("coordinator",)).items()
    }
    assert {name: mods for name, mods in upward.items() if mods} == {}


def test_no_stub_stands_in_for_a_host() -> None:
    """A mixin's `raise NotImplementedError` for its host's private method is one class in two files.

    An abstract method is fine when a class in the same module overrides it (a policy's base class).
    """
    stubs = []
    for name, tree in sources(ROOT, ("coordinator", "node")).items():
        classes = [c for c in tree.body if isinstance(c, ast.ClassDef)]
        for cls in classes:
            for method in cls.body:
                if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                if not any(
                    isinstance(n, ast.Raise) and "NotImplementedError" in ast.dump(n)
                    for n in ast.walk(method)
                ):
                    continue
                overridden = any(
                    any(_base_name(b) == cls.name for b in sub.bases)
                    and any(isinstance(m, ast.FunctionDef) and m.name == method.name for m in sub.body)
                    for sub in classes
                )
                if not overridden:
                    stubs.append(f"{name}.{cls.name}.{method.name}")
    assert stubs == []


def _base_name(base: ast.expr) -> str:
    """`Cache` for `Cache` and for `Cache[K, V]`."""
    if isinstance(base, ast.Subscript):
        base = base.value
    return base.id if isinstance(base, ast.Name) else ""


def test_benchmarks_do_not_import_the_test_suite() -> None:
    users = [
        path.name
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        if any(
            m == "tests" or m.startswith("tests.")
            for m in imported(ast.parse(path.read_text()), top_level_only=False)
        )
    ]
    assert users == []
