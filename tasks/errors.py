"""The one base class of leptonflow's errors, and the errors shared across packages.

Every error leptonflow raises on purpose derives from :class:`LeptonflowError`, so a caller
(an operator, the CLI, a user's script) can tell "the pipeline refused this input or
state, and says why" from a bug. Each subclass's message names what is wrong: the file,
column, setting or rule.
"""

from __future__ import annotations


class LeptonflowError(Exception):
    """Base of every error leptonflow raises on purpose; the message names the file, column, setting or rule."""


class SettingError(LeptonflowError, ValueError):
    """A setting's name or value is not valid; `setting` is its name."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        super().__init__(f"setting {setting}: {problem}")


class ManifestError(LeptonflowError, RuntimeError):
    """A manifest is missing, unreadable, fails its signature check, or lacks a file or field a step needs."""


class IntegrityError(LeptonflowError, RuntimeError):
    """A lake file or published artifact is not what its manifest says; the message starts with the file.

    `path` is the file (URL), `problem` what failed: ``missing``, ``size``, ``sha256``, or another
    check's name (``encryption``, ``rows``, ``key-material``, ``seal``, ``signature``, ``weights``).
    """

    def __init__(self, message: str, *, path: str = "", problem: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.problem = problem


class KeyringError(LeptonflowError, LookupError):
    """A key or keyring is missing, unknown, revoked or malformed; the message names the key id or keyring,
    never key material."""


class ParquetReadError(LeptonflowError, RuntimeError):
    """A lake Parquet file cannot be read or decrypted; the message names the file (and row group)."""


class FeatureError(LeptonflowError, ValueError):
    """A table cannot be turned into model features; the message names the column (and the file, when read
    from one)."""
