"""Errors raised while loading problem sets."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data file does not match its declared format or field mapping.

    The message names the path, the place in the file and what was expected.
    """


class BadRowsError(ValueError):
    """Strict loading found rows without a usable question or gold answer."""


class SpecError(ValueError):
    """A dataset spec string is invalid; the message names the part and the valid choices."""
