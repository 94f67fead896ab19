"""The errors a user can cause, one type per kind; every message names the thing and the fix.

Commands catch `UserError` and print its message as one line with exit status 2.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input a user gave that cannot be used; the message names it and what to do."""


class ConfigError(UserError):
    """A configuration value a user set is invalid; the message names it and the fix."""


class DataError(UserError):
    """Corpus or cache input that cannot be used; the message names the file, line and fix."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, or does not fit what it is used with."""


class TranslateError(UserError):
    """Input the model cannot translate; the message names the line and what to do."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable run directory); the message says why."""
