"""The layout of tasks/: no import circles, packages import only packages below them (in pipeline
order), and nothing in tasks/ imports Airflow."""

from __future__ import annotations

import ast
from pathlib import Path

from tasks.io.code_version import imported_by, source_path

REPO = Path(__file__).resolve().parents[2]
# Level of each top-level part of tasks/: a module may import modules of its own level or lower.
LEVELS = {
    "errors": 0, "spec": 0, "io": 1, "params": 2, "security": 3, "context": 4, "resources": 5,
    "validation": 6, "prep": 7, "training": 8, "compression": 9, "publishing": 10, "inference": 11,
    "steps": 12, "__main__": 13, "tasks": 0,
}


def _modules() -> list[str]:
    out = []
    for path in sorted((REPO / "tasks").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _direct_imports(module: str) -> set[str]:
    """The tasks modules `module` imports itself (anywhere in its source), minus its own parent packages."""
    path = source_path(module)
    found = imported_by(module, path.read_text(), path.name == "__init__.py")
    return {m for m in found if m != module and not module.startswith(m + ".")}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tasks"


def test_every_part_of_tasks_has_a_level():
    assert {_part(m) for m in _modules()} <= set(LEVELS)


def test_no_module_imports_one_that_imports_it_back():
    graph = {m: _direct_imports(m) for m in _modules()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = [(m, d) for m in graph for d in graph[m] if m in reach(d)]
    assert circles == []


def test_imports_follow_the_pipeline_levels():
    upward = [(m, d) for m in _modules() for d in _direct_imports(m) if LEVELS[_part(d)] > LEVELS[_part(m)]]
    assert upward == []


def test_tasks_never_imports_airflow():
    for path in (REPO / "tasks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "airflow" for n in names), path


def _env_reads(tree: ast.AST) -> list[str]:
    """Names read as os.environ.get("X"), os.environ["X"] or os.getenv("X") in a parsed module."""

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    names = []
    for node in ast.walk(tree):
        arg = None
        if isinstance(node, ast.Subscript) and is_environ(node.value):
            arg = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args and (
                (node.func.attr == "get" and is_environ(node.func.value)) or node.func.attr == "getenv"):
            arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            names.append(arg.value)
    return names


def test_leptonflow_environment_is_read_only_in_context():
    """LEPTONFLOW_* variables are read by tasks.context.Settings and nowhere below it."""
    reads = {}
    for path in (REPO / "tasks").rglob("*.py"):
        if path == REPO / "tasks" / "context.py":
            continue
        names = [n for n in _env_reads(ast.parse(path.read_text())) if n.startswith("LEPTONFLOW_")]
        if names:
            reads[str(path.relative_to(REPO))] = names
    assert reads == {}
    assert "LEPTONFLOW_LAKE" in (REPO / "tasks" / "context.py").read_text()
