"""An argparse parser whose errors are one line (a UserError), shared by the commands."""

from __future__ import annotations

import argparse

from fedunlearn.errors import UserError

__all__ = ["OneLineParser", "UsageError"]


class UsageError(UserError):
    """A command-line error (argparse's, or a missing argument)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error raises :class:`UsageError` instead of printing the
    usage and the message on several lines and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)
