"""The labelling package's modules import each other without a cycle (function-level imports included)."""

import ast
from pathlib import Path

import tuneloop.feedback

ROOT = Path(tuneloop.feedback.__file__).parent


def _imports() -> dict[str, set[str]]:
    """{module: feedback modules it imports anywhere in its file}."""
    graph = {}
    for path in ROOT.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneloop.feedback"):
                if node.module == "tuneloop.feedback":
                    deps |= {a.name for a in node.names if (ROOT / f"{a.name}.py").exists()}
                else:
                    deps.add(node.module.split(".")[2])
        graph[path.stem] = deps - {path.stem}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_feedback_modules_have_no_import_cycle():
    graph = _imports()
    assert {"store", "assign", "invariants"} <= set(graph)
    assert "assign" not in graph["store"], "store.py must not import assign.py (assign imports store)"
    assert _cycle(graph) is None, f"import cycle: {' → '.join(_cycle(graph))}"
