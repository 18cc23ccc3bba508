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
