"""The data layer's exception type (defined with the others in `nmt.errors`)."""

from nmt.errors import DataError

__all__ = ["DataError"]
