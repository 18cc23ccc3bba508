"""Keyrings for tests: created explicitly, as `python -m tasks keys init` does (tasks never create one)."""

from __future__ import annotations

from pathlib import Path

from tasks.security import keyring


def keyring_at(path: str | Path) -> str:
    """The path of a keyring file at `path`, created (0600) if there is none yet."""
    path = Path(path)
    if not path.exists():
        keyring.generate(path)
    return str(path)
