"""The package's import graph stays free of circles.

Every ``wakemodel.*`` import counts, module-level or inside a function (a lazy
import is still a dependency); only imports under ``if TYPE_CHECKING:`` are
left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wakemodel

PACKAGE_DIR = Path(wakemodel.__file__).parent


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Ids of all nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(child) for child in ast.walk(node))
    return inside


def _imported_modules(tree: ast.AST, modules: set[str]) -> set[str]:
    """Names of the package's modules that ``tree`` imports at run time."""
    skipped = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "wakemodel":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("wakemodel."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith("wakemodel.")
            )
    return found & modules


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Module name -> the package modules it imports."""
    paths = {path.stem: path for path in package_dir.glob("*.py")}
    names = set(paths)
    return {
        name: _imported_modules(ast.parse(path.read_text(encoding="utf-8")), names) - {name}
        for name, path in paths.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_detects_a_circle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_lazy_imports_but_not_type_checking_ones(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from wakemodel.c import X\n"
        "def f():\n    from wakemodel import b\n",
        encoding="utf-8",
    )
    (tmp_path / "b.py").write_text("import wakemodel.a\n", encoding="utf-8")
    (tmp_path / "c.py").write_text("", encoding="utf-8")
    assert import_graph(tmp_path) == {"a": {"b"}, "b": {"a"}, "c": set()}


def test_package_has_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 10  # the package was found
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph) or [])}"
