"""The code part of every cache key: a hash of the modules a step actually runs.

A step's cached output is valid only while the code that produced it is unchanged.
Rather than keeping a hand-written list of modules per step (which goes stale the day a
step starts importing a new helper), the version is computed from the step's module and
every ``tasks`` module it imports, transitively, read from the source with :mod:`ast`
(imports inside functions count too). Modules are named by their dotted name, and the
hash covers their source text, so a module moved without edits keeps its place in the key
only through its new name: moving code is a code change, and that is intended.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

ROOT_PACKAGE = "tasks"


PACKAGE_DIR = Path(__file__).resolve().parent.parent


@cache
def source_path(module: str) -> Path | None:
    """The file of a ``tasks`` module (found on disk, without importing it), or None if it is not one."""
    parts = module.split(".")
    if parts[0] != ROOT_PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if path is not None and path.is_file():
            return path
    return None


def imported_by(module: str, source: str, is_package: bool) -> set[str]:
    """Dotted names of the ``tasks`` modules that `source` (the text of `module`) imports."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {name for name in found if name.split(".")[0] == ROOT_PACKAGE and source_path(name) is not None}


def imported_modules(module: str) -> tuple[str, ...]:
    """`module` and every ``tasks`` module it imports, transitively (packages' ``__init__`` included), sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = source_path(name)
        if path is None:
            raise ModuleNotFoundError(f"code_version: no source for module {name!r}")
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        todo.extend(imported_by(name, path.read_text(), path.name == "__init__.py") - seen)
    return tuple(sorted(seen))


def code_version(*modules: str) -> str:
    """16 hex digits identifying the source of `modules` and everything they import within ``tasks``."""
    names = sorted({m for module in modules for m in imported_modules(module)})
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0")
        h.update(source_path(name).read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]
