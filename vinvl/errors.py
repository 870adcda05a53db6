"""The errors that are the user's to fix, apart from the program's own failures.

A :class:`UserError` says what the user got wrong (an argument, a file, an id, a query) in a
message that names it. The ``vinvl`` command and the scripts print it as one line,
``vinvl <command>: error: <message>``, and exit with :data:`USER_ERROR_STATUS` (as argparse
does for bad flags); any other exception is a failure of the program and keeps its traceback
(exit status 1). Library code raises subclasses that also derive from the built-in type callers
already catch (``DataError`` and ``ConversionError`` are ``ValueError`` s).
"""
from __future__ import annotations

__all__ = ["USER_ERROR_STATUS", "UserError", "UsageError"]

USER_ERROR_STATUS = 2


class UserError(Exception):
    """A mistake the user can fix; the message names the argument, file, row, id or query at fault."""


class UsageError(UserError, ValueError):
    """A bad command-line argument, or a combination of arguments that cannot apply."""
