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

Once the server has answered a request, the ClientApp records here that the node
deleted its forget data (:meth:`Outbox.record_deleted`: a restarted SuperNode never
trains on it again) and, for the node's own request, the server's sealed receipt
with the node's self-check of it (:meth:`Outbox.store_receipt`);
:meth:`Outbox.status` tells the user where each request stands.

This module imports neither torch nor the data layer: the command starts fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fedunlearn.errors import UserError
from fedunlearn.requests import ForgetRequest
from fedunlearn.sqlite import SQLiteFile, now, transaction

__all__ = ["Outbox", "OutboxEntry", "OutboxError", "RequestStatus"]

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
CREATE TABLE IF NOT EXISTS deleted (
    id    TEXT PRIMARY KEY,
    body  TEXT NOT NULL,
    time  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    id         TEXT PRIMARY KEY,
    receipt    TEXT NOT NULL,
    self_check TEXT NOT NULL,
    stored     TEXT NOT NULL
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


@dataclass(frozen=True)
class RequestStatus:
    """Where one of this client's requests stands (:meth:`Outbox.status`).

    Attributes
    ----------
    request : ForgetRequest
    state : str
        ``unsent``, ``sent`` (the server has it) or ``done`` (its receipt is stored).
    receipt : dict or None
        The server's sealed receipt, once done.
    self_check : dict or None
        The node's check of that receipt (metric name to number), once done.
    """

    request: ForgetRequest
    state: str
    receipt: dict[str, Any] | None = None
    self_check: dict[str, float] | None = None


def _json(value: Any, what: str) -> str:
    """Standard JSON text (sorted keys, no NaN): what the tables hold."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise OutboxError(f"{what} is not storable as JSON: {exc}") from None


def _receipt_request(request_id: str, receipt: dict[str, Any]) -> ForgetRequest:
    """The request a receipt names, checked to be ``request_id``."""
    try:
        request = ForgetRequest.from_json(json.dumps(receipt.get("request")))
    except UserError as exc:
        raise OutboxError(f"the receipt for '{request_id}' names no valid request: "
                          f"{exc}") from None
    if request.request_id != request_id:
        raise OutboxError(f"the receipt for '{request_id}' is for request "
                          f"'{request.request_id}'")
    return request


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

    def count_unsent(self) -> int:
        """How many requests wait to be handed to the server (a cheap look, no parsing)."""
        (count,) = self._conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE sent IS NULL").fetchone()
        return int(count)

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

    def record_deleted(self, request_json: str) -> None:
        """Record that this node deleted the forget data of a request; again changes nothing.

        Raises
        ------
        OutboxError
            Another request with the same id is already recorded deleted.
        """
        request = ForgetRequest.from_json(request_json)
        with transaction(self._conn) as conn:
            conn.execute("INSERT OR IGNORE INTO deleted (id, body, time) VALUES (?, ?, ?)",
                         (request.request_id, request_json, now()))
            (stored,) = conn.execute("SELECT body FROM deleted WHERE id = ?",
                                     (request.request_id,)).fetchone()
            if ForgetRequest.from_json(stored) != request:
                raise OutboxError(f"request id '{request.request_id}' is already recorded "
                                  "deleted with other content")

    def deleted(self) -> list[str]:
        """The requests (JSON, as recorded) whose forget data this node deleted, oldest first."""
        rows = self._conn.execute("SELECT body FROM deleted ORDER BY rowid").fetchall()
        return [body for (body,) in rows]

    def store_receipt(self, request_id: str, receipt: dict[str, Any],
                      self_check: dict[str, float]) -> None:
        """Keep the server's receipt for a request with this node's self-check of it.

        Storing the same receipt again changes nothing, and keeps the first self-check
        (the one the node replied with).

        Raises
        ------
        OutboxError
            The receipt names another request or is not JSON, or another receipt is
            already stored for ``request_id``.
        """
        _receipt_request(request_id, receipt)
        body = _json(receipt, "the receipt")
        check = _json(self_check, "the self-check")
        with transaction(self._conn) as conn:
            conn.execute("INSERT OR IGNORE INTO receipts (id, receipt, self_check, stored) "
                         "VALUES (?, ?, ?, ?)", (request_id, body, check, now()))
            (stored,) = conn.execute("SELECT receipt FROM receipts WHERE id = ?",
                                     (request_id,)).fetchone()
            if stored != body:
                raise OutboxError(f"another receipt is already stored for request "
                                  f"'{request_id}'")

    def receipt(self, request_id: str) -> dict[str, Any] | None:
        """The receipt stored for ``request_id``; None when there is none."""
        row = self._conn.execute("SELECT receipt FROM receipts WHERE id = ?",
                                 (request_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def self_check(self, request_id: str) -> dict[str, float] | None:
        """The self-check stored with ``request_id``'s receipt; None when there is none."""
        row = self._conn.execute("SELECT self_check FROM receipts WHERE id = ?",
                                 (request_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def status(self) -> list[RequestStatus]:
        """Every request of this outbox (oldest first), then those with a receipt that
        this outbox never held (e.g. scheduled by the server for this client)."""
        found: list[RequestStatus] = []
        held = set()
        for entry in self.all():
            request_id = entry.request.request_id
            held.add(request_id)
            receipt = self.receipt(request_id)
            state = "done" if receipt else "unsent" if entry.sent is None else "sent"
            found.append(RequestStatus(entry.request, state, receipt,
                                       self.self_check(request_id) if receipt else None))
        rows = self._conn.execute(
            "SELECT id, receipt, self_check FROM receipts ORDER BY rowid").fetchall()
        for request_id, body, check in rows:
            if request_id not in held:
                receipt = json.loads(body)
                found.append(RequestStatus(_receipt_request(request_id, receipt), "done",
                                           receipt, json.loads(check)))
        return found
