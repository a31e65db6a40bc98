"""Error types that the CLI turns into a one-line message and a non-zero exit.

Every error raised on bad input names the offending file (or case) and the problem,
so a user can fix the input without reading a traceback.
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class DataError(DistillError):
    """An input file or folder is missing, unreadable, inconsistent or out of range."""


class LabelConventionError(DistillError):
    """Label values do not fit the chosen convention, or the convention cannot be told apart."""
