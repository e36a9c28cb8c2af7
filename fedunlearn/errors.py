"""Errors a user can fix, and how the commands report them.

Every error whose message tells a user what to change (a config value, a forget
request, an outbox, a data set's files, the nodes of a federation) subclasses
:class:`UserError`; each is defined beside the code that raises it
(:class:`~fedunlearn.config.ConfigError`, :class:`~fedunlearn.requests.RequestRefused`,
...). The ``fedunlearn`` commands catch :class:`UserError` only and print it with
:func:`report`: any other exception is a bug and keeps its traceback.

This module imports nothing of the project: every layer can use it.
"""

from __future__ import annotations

import sys

__all__ = ["EXIT_USER_ERROR", "UserError", "first_line", "report"]

# The exit code of a command stopped by a UserError (argparse's, for a usage error).
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem a user can fix: reported as one line, exit code 2."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def report(prog: str, error: BaseException | str) -> int:
    """Print ``PROG: error: MESSAGE`` on stderr as one line.

    Parameters
    ----------
    prog : str
        The command, e.g. ``"fedunlearn forget"``.
    error : BaseException or str
        What went wrong; of an exception only the :func:`first_line` is printed.

    Returns
    -------
    int
        :data:`EXIT_USER_ERROR`, for the caller to return or exit with.
    """
    message = error if isinstance(error, str) else first_line(error)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR
