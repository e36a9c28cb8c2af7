"""The client-side store of forget requests waiting to reach the server.

On a client machine, ``fedunlearn forget`` (:mod:`fedunlearn.commands.forget`)
records a request against the client's own data in an :class:`Outbox` file. The
ClientApp attaches the :meth:`Outbox.unsent` requests to its next reply to the
server's ``query.requests`` poll and marks them sent once the reply is built.
The server, not the client, decides whether a request can be carried out
(:func:`fedunlearn.requests.materialize` needs the data). The ClientApp records
which partition its node holds (:meth:`Outbox.claim`), so that the command can
refuse a request made in another client's name. An unsent request can be
cancelled (:meth:`Outbox.cancel`).

This module imports neither torch nor the data layer: the command starts fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fedunlearn.errors import UserError
from fedunlearn.requests import ForgetRequest
from fedunlearn.sqlite import SQLiteFile, now, transaction

__all__ = ["Outbox", "OutboxEntry", "OutboxError"]

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


class OutboxError(UserError):
    """A conflicting or unknown request id, or an outbox file that cannot be used (one line)."""


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
                (request.request_id, body, now()),
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
        stamp = now()
        with transaction(self._conn) as conn:
            marks = ", ".join("?" * len(wanted))
            rows = conn.execute(f"SELECT id FROM outbox WHERE id IN ({marks})", wanted)
            known = {row[0] for row in rows}
            unknown = [i for i in wanted if i not in known]
            if unknown:
                raise OutboxError(f"unknown request id(s) in the outbox: {', '.join(unknown)}")
            conn.executemany(
                "UPDATE outbox SET sent = ? WHERE id = ? AND sent IS NULL",
                [(stamp, i) for i in wanted],
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
