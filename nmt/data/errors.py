"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Corpus or cache input that cannot be used; the message names the file, line and fix."""
