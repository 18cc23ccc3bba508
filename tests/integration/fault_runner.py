"""Run ``python -m tasks ...`` in this process with faults injected at chosen file operations.

    python tests/integration/fault_runner.py RULES_JSON -- clean --dataset events --ds 2026-11-01 ...

RULES_JSON is a list of rules ``{"op", "path", "action", "nth", "errno", "when"}``:

- ``op``: ``write`` (a file opened for writing: the fault hits its first write), ``link`` (``os.link``,
  by destination), ``replace`` (``os.replace``, by destination), ``rm`` (``shutil.rmtree``,
  ``os.remove`` / ``os.unlink``), ``pipe`` (an object-store PUT through fsspec's ``pipe_file``),
  ``s3rm`` (object-store deletes through fsspec's ``rm``);
- ``path``: an ``fnmatch`` pattern of the path (or URL) operated on;
- ``nth``: which matching call (1 = the first; default 1); 0 = every matching call;
- ``action``: ``raise`` (an ``OSError`` with ``errno``, default ENOSPC), ``kill`` (SIGKILL this
  process), ``stop`` (SIGSTOP this process; it continues where it was once SIGCONT comes);
- ``when``: ``before`` the operation (default) or ``after`` it completed (``write``: after the file is
  closed).

Every fired rule is appended to ``$LF_FAULT_LOG`` (one JSON line) before it acts, so a test knows
which fault hit and where. Operations are counted in this process only; Dask workers of the step
run in-process (``{"backend": "local", "processes": false}``), so their writes count too. The code
under test is not changed: the faults come from the operating-system calls it makes.
"""

from __future__ import annotations

import builtins
import errno as errno_mod
import fnmatch
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_lock = threading.Lock()
_counts: dict[int, int] = {}
_RULES: list[dict[str, Any]] = []


def _fire(i: int, rule: dict[str, Any], path: str) -> None:
    log = os.environ.get("LF_FAULT_LOG")
    if log:
        with builtins.open(log, "a") as fh:  # the real open: never hooked
            fh.write(json.dumps({"rule": i, **rule, "hit": path, "pid": os.getpid()}) + "\n")
    action = rule.get("action", "raise")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        code = int(rule.get("errno", errno_mod.ENOSPC))
        raise OSError(code, os.strerror(code), path)


def _matches(op: str, path: Any, when: str) -> list[tuple[int, dict[str, Any]]]:
    """The rules that fire now for operation `op` on `path` (counting each matching call)."""
    out = []
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else str(path)
    with _lock:
        for i, rule in enumerate(_RULES):
            if rule["op"] != op or rule.get("when", "before") != when or not fnmatch.fnmatch(text, rule["path"]):
                continue
            _counts[i] = _counts.get(i, 0) + 1
            nth = int(rule.get("nth", 1))
            if nth == 0 or _counts[i] == nth:
                out.append((i, rule))
    return out


def _check(op: str, path: Any, when: str = "before") -> None:
    for i, rule in _matches(op, path, when):
        _fire(i, rule, os.fspath(path) if isinstance(path, str | os.PathLike) else str(path))


class _FaultyFile:
    """A file opened for writing whose first write (or close, for ``when: after``) fires the rules."""

    def __init__(self, fh: Any, path: str, before: list, after: list):
        self._fh, self._path, self._before, self._after = fh, path, before, after

    def write(self, data: Any) -> int:
        if self._before:
            pending, self._before = self._before, []
            for i, rule in pending:
                _fire(i, rule, self._path)
        return self._fh.write(data)

    def close(self) -> None:
        self._fh.close()
        if self._after:
            pending, self._after = self._after, []
            for i, rule in pending:
                _fire(i, rule, self._path)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __iter__(self):
        return iter(self._fh)


def install(rules: list[dict[str, Any]]) -> None:
    _RULES[:] = rules
    real_open, real_link, real_replace = builtins.open, os.link, os.replace
    real_rmtree, real_remove, real_unlink = shutil.rmtree, os.remove, os.unlink

    def fopen(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, mode, *args, **kwargs)
        if isinstance(file, int) or not any(c in mode for c in "wax+"):
            return fh
        before, after = _matches("write", file, "before"), _matches("write", file, "after")
        return _FaultyFile(fh, os.fspath(file), before, after) if before or after else fh

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        _check("link", dst)
        real_link(src, dst, *args, **kwargs)
        _check("link", dst, "after")

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        _check("replace", dst)
        real_replace(src, dst, *args, **kwargs)
        _check("replace", dst, "after")

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        _check("rm", path)
        real_rmtree(path, *args, **kwargs)
        _check("rm", path, "after")

    def remove(path: Any, *args: Any, **kwargs: Any) -> None:
        _check("rm", path)
        real_remove(path, *args, **kwargs)

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        _check("rm", path)
        real_unlink(path, *args, **kwargs)

    builtins.open, os.link, os.replace = fopen, link, replace
    shutil.rmtree, os.remove, os.unlink = rmtree, remove, unlink
    if any(r["op"] in ("pipe", "s3rm") for r in rules):
        _hook_object_store()


def _hook_object_store() -> None:
    """S3 (s3fs): PUTs (``pipe_file``) and deletes (``rm``) of matching keys fire the rules."""
    import s3fs

    real_pipe, real_rm = s3fs.S3FileSystem._pipe_file, s3fs.S3FileSystem._rm

    async def pipe_file(self: Any, path: str, data: Any, *args: Any, **kwargs: Any) -> Any:
        _check("pipe", path)
        out = await real_pipe(self, path, data, *args, **kwargs)
        _check("pipe", path, "after")
        return out

    async def rm(self: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        for p in path if isinstance(path, list) else [path]:
            _check("s3rm", p)
        return await real_rm(self, path, *args, **kwargs)

    s3fs.S3FileSystem._pipe_file, s3fs.S3FileSystem._rm = pipe_file, rm


def main(argv: list[str]) -> int:
    rules = json.loads(argv[0])
    rest = argv[argv.index("--") + 1:]
    if not os.environ.get("PYTHONPATH"):  # else the checkout PYTHONPATH names (the suite can run another one)
        sys.path[:0] = [str(REPO), str(REPO / "plugins")]
    install(rules)
    from tasks.__main__ import main as tasks_main

    return tasks_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
