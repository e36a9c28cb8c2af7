"""Durable, private embedded SQLite files: the server's ledger and a client's outbox.

A file opened with :func:`connect` uses SQLite's write-ahead log with
``synchronous=FULL``: a write is on disk when its :func:`transaction` returns, so
a finished step survives a crash or a power cut right after.

The file and the folders created for it are private to their owner (0600 and
0700), whatever the umask: the ledger and the outbox name clients and samples.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

__all__ = ["SQLiteFile", "connect", "now", "transaction"]


def now() -> str:
    """The current UTC time as the files store it: ISO 8601 to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def connect(path: str | Path, schema: str) -> sqlite3.Connection:
    """Open (creating it and its folder if needed) a durable SQLite file.

    The connection is in autocommit mode, so that :func:`transaction` controls
    every transaction explicitly; the journal is a write-ahead log and every
    commit is synced to disk (``synchronous=FULL``).

    Parameters
    ----------
    path : str or Path
        The database file.
    schema : str
        ``CREATE TABLE IF NOT EXISTS`` statements, run once on open.

    Returns
    -------
    sqlite3.Connection
    """
    path = Path(path)
    _private_dirs(path.parent)
    # Create the file 0600 before SQLite does (it would honour the umask); SQLite gives
    # its -wal and -shm files the database file's mode.
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    # WAL lets a reader (a status query) run while the server writes.
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL, WAL's usual setting, may lose the last commits on power loss: FULL does not.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    with transaction(conn):
        for statement in schema.split(";"):
            if statement.strip():
                conn.execute(statement)
    return conn


def _private_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents as 0700 (existing folders are left alone)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(mode=0o700, exist_ok=True)
        os.chmod(created, 0o700)  # mkdir's mode is masked by the umask


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed on success, rolled back on any exception.

    ``BEGIN IMMEDIATE`` takes the write lock up front, so a read-check-update
    sequence inside cannot interleave with another process's.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SQLiteFile:
    """An embedded SQLite file opened with :func:`connect`: the lifecycle shared by the
    server's ledger and a client's outbox (subclasses set ``SCHEMA``).

    Parameters
    ----------
    path : str or Path
        The file; created with its folder when missing, reopened otherwise.
    """

    SCHEMA = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path, self.SCHEMA)

    def close(self) -> None:
        """Close the file; further calls fail."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
