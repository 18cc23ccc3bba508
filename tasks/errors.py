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


class UsageError(LeptonflowError, ValueError):
    """A command-line or step argument is not valid; `argument` is its name (``--ds``, ``ds``)."""

    def __init__(self, argument: str, problem: str) -> None:
        self.argument = argument
        self.problem = problem
        super().__init__(f"argument {argument}: {problem}")


class CommitError(LeptonflowError, RuntimeError):
    """A lake commit was refused; nothing of this writer became visible and the committed output is untouched."""


class FencedError(CommitError):
    """The writer's fencing token is older than the one that committed the stage since: it was superseded.

    `stage` is the stage, `token` the writer's token, `winner` the token of the current commit.
    """

    def __init__(self, message: str, *, stage: str = "", token: int = 0, winner: int = 0) -> None:
        super().__init__(message)
        self.stage = stage
        self.token = token
        self.winner = winner


class CommitConflict(CommitError):
    """A read-modify-write commit found another commit of the stage since it read it (re-run to merge again)."""


class StorageError(LeptonflowError, OSError):
    """Writing to the lake failed (disk full, I/O error, permission); the message starts with the path.

    An ``OSError`` with the original ``errno`` and ``filename``, so callers that handle OS errors still do.
    """

    def __init__(self, path: str, exc: OSError | None = None, *, code: int | None = None, reason: str = "") -> None:
        if exc is not None:
            code, reason = exc.errno, exc.strerror or str(exc) or type(exc).__name__
        super().__init__(code, f"{path}: cannot write: {reason}" + (f" [Errno {code}]" if code else ""))
        self.filename = path
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return self.strerror or super().__str__()

    def __reduce__(self):  # raised in Dask workers: must travel to the client intact
        return (_storage_error, (self.path, self.errno, self.reason))


def _storage_error(path: str, code: int | None, reason: str) -> StorageError:
    return StorageError(path, code=code, reason=reason)


def storage_error(path: str, exc: OSError) -> OSError:
    """`exc` as a :class:`StorageError` naming `path` (unchanged when it already is one)."""
    return exc if isinstance(exc, StorageError) else StorageError(path, exc)
