"""The client-side store of forget requests waiting to reach the server.

On a client machine, ``fedunlearn forget`` (:func:`forget_command`) records a
request against the client's own data in an :class:`Outbox` file. The
ClientApp attaches the :meth:`Outbox.unsent` requests to its next reply to the
server's ``query.requests`` poll and marks them sent once the reply is built.
The server, not the client, decides whether a request can be carried out
(:func:`fedunlearn.requests.materialize` needs the data): the command checks
the request's shape and bounds, and that ``--client`` is the partition of the
node that owns the outbox once the ClientApp has recorded it
(:meth:`Outbox.claim`). ``fedunlearn forget --cancel ID`` removes a request
that has not been sent yet.

This module imports neither torch nor the data layer: the command starts fast.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedunlearn.ledger import SQLiteFile, transaction
from fedunlearn.requests import KINDS, ForgetRequest, RequestRefused, new_request_id

__all__ = ["Outbox", "OutboxEntry", "OutboxError", "forget_command"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id    TEXT PRIMARY KEY,
    body  TEXT NOT NULL,
    added TEXT NOT NULL,
    sent  TEXT
);
CREATE TABLE IF NOT EXISTS node (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class OutboxError(ValueError):
    """A conflicting or unknown request id (one line)."""


@dataclass(frozen=True)
class OutboxEntry:
    """One stored request.

    Attributes
    ----------
    request : ForgetRequest
    added : str
        ISO time it was added.
    sent : str or None
        ISO time it was first attached to a reply; None while unsent.
    """

    request: ForgetRequest
    added: str
    sent: str | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Outbox(SQLiteFile):
    """Forget requests a client has made, durable across restarts (SQLite file).

    Parameters
    ----------
    path : str or Path
        The file; created with its folder when missing.
    """

    SCHEMA = _SCHEMA

    def add(self, request: ForgetRequest) -> None:
        """Store a request as unsent; adding the same request again changes nothing.

        Raises
        ------
        OutboxError
            Another request with the same id is already stored.
        """
        body = request.to_json()
        with transaction(self._conn) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO outbox (id, body, added, sent) VALUES (?, ?, ?, NULL)",
                (request.request_id, body, _now()),
            )
            (stored,) = conn.execute(
                "SELECT body FROM outbox WHERE id = ?", (request.request_id,)
            ).fetchone()
            if stored != body:  # raising rolls the transaction back
                raise OutboxError(
                    f"request id '{request.request_id}' is already in the outbox "
                    f"with other content"
                )

    def unsent(self) -> list[ForgetRequest]:
        """Requests not yet attached to a reply, oldest first."""
        rows = self._conn.execute(
            "SELECT body FROM outbox WHERE sent IS NULL ORDER BY rowid"
        ).fetchall()
        return [ForgetRequest.from_json(body) for (body,) in rows]

    def mark_sent(self, ids: Iterable[str]) -> None:
        """Mark requests as sent; a request already sent keeps its first time.

        Raises
        ------
        OutboxError
            An id is not in the outbox (nothing is marked then).
        """
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return
        now = _now()
        with transaction(self._conn) as conn:
            marks = ", ".join("?" * len(wanted))
            rows = conn.execute(f"SELECT id FROM outbox WHERE id IN ({marks})", wanted)
            known = {row[0] for row in rows}
            unknown = [i for i in wanted if i not in known]
            if unknown:
                raise OutboxError(f"unknown request id(s) in the outbox: {', '.join(unknown)}")
            conn.executemany(
                "UPDATE outbox SET sent = ? WHERE id = ? AND sent IS NULL",
                [(now, i) for i in wanted],
            )

    def cancel(self, request_id: str) -> ForgetRequest:
        """Remove an unsent request and return it.

        Raises
        ------
        OutboxError
            The id is unknown, or the request was already sent (the server has
            it: cancelling is then no longer the client's to do).
        """
        with transaction(self._conn) as conn:
            row = conn.execute("SELECT body, sent FROM outbox WHERE id = ?",
                               (request_id,)).fetchone()
            if row is None:
                raise OutboxError(f"unknown request id '{request_id}' in the outbox")
            if row[1] is not None:
                raise OutboxError(f"request '{request_id}' was already sent ({row[1]}); "
                                  "it can no longer be cancelled")
            conn.execute("DELETE FROM outbox WHERE id = ?", (request_id,))
        return ForgetRequest.from_json(row[0])

    def claim(self, partition: int) -> None:
        """Record which partition this node holds (the ClientApp does, on every poll)."""
        with transaction(self._conn) as conn:
            conn.execute("INSERT INTO node (key, value) VALUES ('partition-id', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (int(partition),))

    def partition(self) -> int | None:
        """The partition of the node that owns this outbox, once the ClientApp said so."""
        row = self._conn.execute(
            "SELECT value FROM node WHERE key = 'partition-id'").fetchone()
        return None if row is None else int(row[0])

    def all(self) -> list[OutboxEntry]:
        """Every stored request, sent or not, oldest first."""
        rows = self._conn.execute(
            "SELECT body, added, sent FROM outbox ORDER BY rowid"
        ).fetchall()
        return [OutboxEntry(ForgetRequest.from_json(body), added, sent)
                for body, added, sent in rows]


# ---- `fedunlearn forget` --------------------------------------------------------
PROG = "fedunlearn forget"


class _UsageError(Exception):
    """A command-line error, reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the usage and the message on several lines: we want one.
        raise _UsageError(message)


def _id_list(text: str) -> tuple[int, ...]:
    try:
        # Bounds are ForgetRequest's (below 2^63); parsing only needs integers.
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sample ids like 1,2,3, got '{text}'"
        ) from None


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description="Record a request to forget some of this client's data; the ClientApp "
        "sends it to the server with its next reply. Prints the request id. "
        "With --cancel ID, remove a request that has not been sent yet.",
    )
    parser.add_argument("--outbox", required=True, type=Path, help="the client's outbox file")
    parser.add_argument("--cancel", metavar="ID", help="remove this unsent request instead")
    parser.add_argument("--client", type=int, help="this client's partition id")
    parser.add_argument("--kind", choices=KINDS, help="what to forget")
    parser.add_argument("--class", dest="cls", type=int, help="class to forget (kind class)")
    parser.add_argument("--ids", type=_id_list, help="sample ids to forget (kind instance)")
    parser.add_argument(
        "--fraction", type=float, help="share of this client's samples (kind instance)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fraction draw")
    return parser


def forget_command(argv: list[str]) -> int:
    """``fedunlearn forget``: add a request for this client's data to its outbox.

    ``fedunlearn forget --outbox PATH --client K --kind KIND [--class C]
    [--ids 1,2,3] [--fraction F] [--seed S]``. Kind ``class`` needs ``--class``;
    kind ``instance`` needs one of ``--ids`` and ``--fraction`` (a fraction of
    this client's own samples); kinds ``client`` and ``backdoor`` take neither.
    ``fedunlearn forget --outbox PATH --cancel ID`` removes an unsent request.

    Parameters
    ----------
    argv : list of str
        The arguments after ``forget``.

    Returns
    -------
    int
        0 after printing the new (or cancelled) request id; 2 after a one-line
        error on stderr.
    """
    try:
        args = _parser().parse_args(argv)
        if args.cancel is not None:
            with _open(args.outbox) as outbox:
                outbox.cancel(args.cancel)
            print(f"cancelled {args.cancel}")
            return 0
        if args.client is None or args.kind is None:
            raise _UsageError("the following arguments are required: --client, --kind")
        request = ForgetRequest(
            request_id=new_request_id(),
            kind=args.kind,
            client=args.client,
            cls=args.cls,
            ids=args.ids,
            fraction=args.fraction,
            # A client's fraction applies to its own samples only.
            clients=(args.client,) if args.fraction is not None else None,
            seed=args.seed,
            origin="client",
        )
        with _open(args.outbox) as outbox:
            owner = outbox.partition()
            if owner is not None and owner != request.client:
                raise OutboxError(f"this outbox belongs to client {owner}, not client "
                                  f"{request.client}")
            outbox.add(request)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (_UsageError, RequestRefused, OutboxError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    print(request.request_id)
    return 0


@contextmanager
def _open(path: Path) -> Iterator[Outbox]:
    """The outbox at ``path``; file errors become one-line :class:`OutboxError`s."""
    try:
        outbox = Outbox(path)
    except (sqlite3.Error, OSError) as exc:
        # sqlite's own message ("unable to open database file") names no file.
        raise OutboxError(f"cannot use the outbox {path}: {exc}") from exc
    try:
        yield outbox
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot use the outbox {path}: {exc}") from exc
    finally:
        outbox.close()
