"""The server's durable record of forget requests and their receipts (embedded SQLite).

Every request the server learns of is recorded once, by id, and moves through

``received -> running -> done``, or to ``failed`` (with a reason) from
``received`` or ``running``.

A request left ``running`` by a crashed server is still :meth:`Ledger.pending`
and is resumed by the next server; ``done`` and ``failed`` requests are never
returned again, so never repeated. Each unlearning method that ran for a
request leaves a receipt (a JSON object the caller builds, e.g. with the
:func:`~fedunlearn.digest.digest` of the model before and after).

The ledger also stores who sent each request (``scenario`` or ``client:K``).
A submission that never became a request (malformed, sent in another client's
name, or re-using a recorded id with other content or another sender) is kept
as a row of its own in ``rejections`` (:meth:`Ledger.reject`): a forged
duplicate never changes the genuine request.

The ledger is a :class:`~fedunlearn.sqlite.SQLiteFile`: private to its owner
(requests name clients and samples), and on disk when a write returns, so a
finished request survives a crash or a power cut right after.

Why one module of ~450 lines: one state machine over one table set; most lines are
the documentation of its transitions and guarantees.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedunlearn.receipts import GENESIS, receipt_hash, seal
from fedunlearn.requests import ForgetRequest, RequestRefused
from fedunlearn.sqlite import SQLiteFile, now, transaction

__all__ = [
    "STATES",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "Rejection",
    "RequestConflict",
]

STATES: tuple[str, ...] = ("received", "running", "done", "failed")
# Transition name -> (states it may start from, state it leads to).
_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({"received", "running"}), "running"),
    "finish": (frozenset({"running"}), "done"),
    "fail": (frozenset({"received", "running"}), "failed"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id       TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    client   INTEGER NOT NULL,
    body     TEXT NOT NULL,
    state    TEXT NOT NULL CHECK (state IN ('received', 'running', 'done', 'failed')),
    reason   TEXT,
    created  TEXT NOT NULL,
    updated  TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    sender   TEXT NOT NULL DEFAULT 'unknown',
    content  TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS rejections (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT,
    sender     TEXT NOT NULL,
    body       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    request_id TEXT NOT NULL REFERENCES requests (id),
    method     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created    TEXT NOT NULL,
    PRIMARY KEY (request_id, method)
);
CREATE TABLE IF NOT EXISTS deliveries (
    request_id TEXT NOT NULL REFERENCES requests (id),
    partition  INTEGER NOT NULL,
    confirmed  TEXT NOT NULL,
    self_check TEXT,
    PRIMARY KEY (request_id, partition)
);
"""


# Columns added after the first release; an older ledger file gains them on open.
_ADDED_COLUMNS = {"sender": "TEXT NOT NULL DEFAULT 'unknown'",
                  "content": "TEXT NOT NULL DEFAULT ''"}
# A rejected submission's body is kept for the record, cut to this many characters.
_MAX_REJECTED_BODY = 4096


class LedgerError(RuntimeError):
    """An unknown request id or a transition its state does not allow (one line)."""


class RequestConflict(LedgerError):
    """A request id that is already recorded with other content or another sender."""


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded request and where it stands.

    Attributes
    ----------
    request : ForgetRequest
    state : str
        One of :data:`STATES`.
    sender : str
        Who submitted it: ``scenario`` or ``client:K`` (the polled node's partition).
    reason : str or None
        Why it failed (``state == "failed"`` only).
    attempts : int
        How many times it was started (more than one: resumed after a crash).
    created, updated : str
        ISO times the ledger recorded it and last changed it.
    """

    request: ForgetRequest
    state: str
    reason: str | None
    attempts: int
    created: str
    updated: str
    sender: str = "unknown"


@dataclass(frozen=True)
class Rejection:
    """A submission the ledger refused to record as a request.

    Attributes
    ----------
    request_id : str or None
        The id it claimed, when it could be read.
    sender : str
        ``scenario`` or ``client:K``.
    body : str
        What was sent (cut to 4,096 characters).
    reason : str
        One line.
    created : str
        ISO time of the refusal.
    """

    request_id: str | None
    sender: str
    body: str
    reason: str
    created: str


class Ledger(SQLiteFile):
    """The server's durable record of forget requests and their receipts.

    Parameters
    ----------
    path : str or Path
        The SQLite file; created with its folder when missing, reopened otherwise.

    Examples
    --------
    >>> with Ledger(tmp / "ledger.sqlite") as ledger:  # doctest: +SKIP
    ...     if ledger.record(request):
    ...         ledger.start(request.request_id)
    """

    SCHEMA = _SCHEMA

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._migrate()

    def _migrate(self) -> None:
        """Give a ledger file of an earlier version the columns added since."""
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(requests)")}
        missing = [name for name in _ADDED_COLUMNS if name not in have]
        if not missing:
            return
        with transaction(self._conn) as conn:
            for name in missing:
                conn.execute(f"ALTER TABLE requests ADD COLUMN {name} {_ADDED_COLUMNS[name]}")
            for request_id, body in conn.execute(
                    "SELECT id, body FROM requests WHERE content = ''").fetchall():
                content = _content(ForgetRequest.from_json(body))
                conn.execute("UPDATE requests SET content = ? WHERE id = ?",
                             (content, request_id))

    # ---- writes --------------------------------------------------------------
    def record(self, request: ForgetRequest, sender: str = "scenario") -> bool:
        """Record a request as ``received``, with who sent it.

        Parameters
        ----------
        request : ForgetRequest
            A validated request.
        sender : str
            ``scenario`` or ``client:K``.

        Returns
        -------
        bool
            True if the id was new; False if the same request (content and
            sender) was already recorded, in which case nothing changes (a
            request is never duplicated or reset).

        Raises
        ------
        RequestConflict
            The id is recorded with other content or another sender; nothing
            changes (the caller records the submission with :meth:`reject`).
        """
        stamp = now()
        content = _content(request)
        with transaction(self._conn) as conn:
            row = conn.execute("SELECT content, sender FROM requests WHERE id = ?",
                               (request.request_id,)).fetchone()
            if row is not None:
                if tuple(row) != (content, sender):
                    raise RequestConflict(
                        f"request id '{request.request_id}' is already recorded "
                        f"{'from ' + row[1] if row[1] != sender else 'with other content'}")
                return False
            conn.execute(
                "INSERT INTO requests (id, kind, client, body, state, reason, created, "
                "updated, attempts, sender, content) "
                "VALUES (?, ?, ?, ?, 'received', NULL, ?, ?, 0, ?, ?)",
                (request.request_id, request.kind, request.client, request.to_json(), stamp, stamp,
                 sender, content),
            )
        return True

    def reject(self, body: str, sender: str, reason: str,
               request_id: str | None = None) -> None:
        """Keep a submission that is not recorded as a request, with why.

        Never raises for odd input: the body is cut to 4,096 characters and any
        text that is not valid Unicode is replaced, so a hostile submission is
        still on file.

        Parameters
        ----------
        body : str
            What was submitted.
        sender : str
            ``scenario`` or ``client:K``.
        reason : str
            Why it was refused (its first line is kept).
        request_id : str, optional
            The id it claimed, when it could be read.
        """
        def clean(text: object, limit: int) -> str:
            return str(text)[:limit].encode("utf-8", "replace").decode("utf-8")

        with transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO rejections (request_id, sender, body, reason, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (None if request_id is None else clean(request_id, 64), clean(sender, 64),
                 clean(body, _MAX_REJECTED_BODY), _one_line(clean(reason, 1000)) or "", now()),
            )

    def start(self, request_id: str) -> None:
        """``received`` or ``running`` (resumed after a crash) -> ``running``; attempts + 1."""
        self._transition(request_id, "start")

    def finish(self, request_id: str) -> None:
        """``running`` -> ``done``."""
        self._transition(request_id, "finish")

    def fail(self, request_id: str, reason: str) -> None:
        """``received`` or ``running`` -> ``failed`` with a one-line ``reason``."""
        self._transition(request_id, "fail", reason)

    def add_receipt(self, request_id: str, method: str, receipt: Mapping[str, Any],
                    key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """Append the receipt of one method for a request to the chain of receipts.

        With ``key``, the receipt is sealed inside the same transaction: chained to
        the last receipt of the ledger and signed (:func:`fedunlearn.receipts.seal`),
        so no two receipts can claim the same predecessor.

        Parameters
        ----------
        request_id : str
            A recorded request.
        method : str
            The unlearning method, e.g. ``"NoT"``.
        receipt : mapping
            JSON-serializable; e.g. timings, bytes, and model
            :func:`~fedunlearn.digest.digest` values.
        key : Ed25519PrivateKey, optional
            The server's signing key.

        Returns
        -------
        dict
            The receipt as stored (sealed when ``key`` was given).

        Raises
        ------
        LedgerError
            Unknown request, not a mapping, or the method already has a receipt for
            it (a receipt is never replaced: that would break the chain).
        """
        return self.add_receipts([(request_id, method, receipt)], key)[0]

    def add_receipts(self, items: Sequence[tuple[str, str, Mapping[str, Any]]],
                     key: Ed25519PrivateKey | None = None) -> list[dict[str, Any]]:
        """Append several receipts at once, in order, in one transaction (all or none).

        One pass over simultaneous requests answers each of them: their receipts enter
        the chain together, so a crash never leaves some of them answered and the
        others not. Each item is ``(request_id, method, receipt)`` as in
        :meth:`add_receipt`, which raises the same errors.
        """
        stored_all = []
        with transaction(self._conn) as conn:
            for request_id, method, receipt in items:
                if not isinstance(receipt, Mapping):
                    raise LedgerError(
                        f"a receipt must be a mapping, got {type(receipt).__name__}")
                self._state(conn, request_id)  # raises on an unknown id
                taken = conn.execute(
                    "SELECT 1 FROM receipts WHERE request_id = ? AND method = ?",
                    (request_id, method)).fetchone()
                if taken:
                    raise LedgerError(f"request '{request_id}' already has a {method} receipt")
                stored = dict(receipt)
                if key is not None:
                    last = conn.execute(
                        "SELECT body FROM receipts ORDER BY rowid DESC LIMIT 1").fetchone()
                    previous = receipt_hash(json.loads(last[0])) if last else GENESIS
                    stored = seal(receipt, key, previous)
                conn.execute(
                    "INSERT INTO receipts (request_id, method, body, created) "
                    "VALUES (?, ?, ?, ?)",
                    (request_id, method, json.dumps(stored, sort_keys=True), now()),
                )
                stored_all.append(stored)
        return stored_all

    def confirm(self, request_id: str, partition: int,
                self_check: Mapping[str, float] | None = None) -> None:
        """Record that a node deleted a request's forget data (and, for the requesting
        node, that it received the receipt and what its self-check found).

        A repeated confirmation keeps the first time; a self-check arriving later
        (the receipt re-delivered) is added.
        """
        body = None if self_check is None else json.dumps(dict(self_check), sort_keys=True)
        with transaction(self._conn) as conn:
            self._state(conn, request_id)  # raises on an unknown id
            conn.execute(
                "INSERT INTO deliveries (request_id, partition, confirmed, self_check) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (request_id, partition) DO UPDATE SET "
                "self_check = COALESCE(deliveries.self_check, excluded.self_check)",
                (request_id, int(partition), now(), body))

    def confirmations(self, request_id: str) -> dict[int, dict[str, float] | None]:
        """Partitions that confirmed deleting a request's data, with the self-check of
        the requesting node (``None`` for the others, or before its receipt arrived)."""
        rows = self._conn.execute(
            "SELECT partition, self_check FROM deliveries WHERE request_id = ? "
            "ORDER BY partition", (request_id,)).fetchall()
        return {int(p): (None if body is None else json.loads(body)) for p, body in rows}

    # ---- reads ---------------------------------------------------------------
    def get(self, request_id: str) -> LedgerEntry:
        """The entry of one request; :class:`LedgerError` when the id is unknown."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None:
            raise LedgerError(f"unknown request id '{request_id}'")
        return _entry(row)

    def find(self, request: ForgetRequest, sender: str) -> LedgerEntry | None:
        """The recorded request from ``sender`` with the same content, if any (oldest)."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM requests WHERE content = ? AND sender = ? "
            "ORDER BY rowid LIMIT 1", (_content(request), sender)).fetchone()
        return None if row is None else _entry(row)

    def rejections(self) -> list[Rejection]:
        """Every refused submission, oldest first."""
        rows = self._conn.execute(
            "SELECT request_id, sender, body, reason, created FROM rejections ORDER BY seq"
        ).fetchall()
        return [Rejection(*row) for row in rows]

    def pending(self) -> list[LedgerEntry]:
        """Requests still to carry out (``received`` or ``running``), oldest first.

        A stored request that no longer passes validation (recorded by an earlier
        version with looser checks) is failed with the reason instead of returned,
        so it cannot stop every later server.
        """
        where = "WHERE state IN ('received', 'running')"
        rows = self._conn.execute(
            f"SELECT id, {_COLUMNS} FROM requests {where} ORDER BY rowid").fetchall()
        entries = []
        for request_id, *row in rows:
            try:
                entries.append(_entry(tuple(row)))
            except RequestRefused as exc:
                self.fail(request_id, f"stored request is invalid: {exc}")
        return entries

    def all(self) -> list[LedgerEntry]:
        """Every recorded request, oldest first."""
        return self._entries("")

    def chain(self) -> list[dict[str, Any]]:
        """Every receipt of the ledger in the order they were added (the hash chain)."""
        rows = self._conn.execute("SELECT body FROM receipts ORDER BY rowid").fetchall()
        return [json.loads(body) for (body,) in rows]

    def receipts(self, request_id: str) -> dict[str, dict[str, Any]]:
        """The receipts of a request by method, in the order they were (last) added."""
        self.get(request_id)  # raises on an unknown id
        rows = self._conn.execute(
            "SELECT method, body FROM receipts WHERE request_id = ? ORDER BY created, rowid",
            (request_id,),
        ).fetchall()
        return {method: json.loads(body) for method, body in rows}

    # ---- internals -----------------------------------------------------------
    def _entries(self, where: str) -> list[LedgerEntry]:
        # rowid order is insertion order: the order in which requests arrived.
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM requests {where} ORDER BY rowid"
        ).fetchall()
        return [_entry(row) for row in rows]

    @staticmethod
    def _state(conn: sqlite3.Connection, request_id: str) -> str:
        row = conn.execute("SELECT state FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise LedgerError(f"unknown request id '{request_id}'")
        return str(row[0])

    def _transition(self, request_id: str, name: str, reason: str | None = None) -> None:
        with transaction(self._conn) as conn:
            self._move(conn, request_id, name, reason)

    def _move(
        self, conn: sqlite3.Connection, request_id: str, name: str, reason: str | None
    ) -> None:
        """Apply transition ``name`` inside the caller's transaction."""
        sources, target = _TRANSITIONS[name]
        state = self._state(conn, request_id)
        if state not in sources:
            raise LedgerError(
                f"cannot {name} request '{request_id}': it is {state} "
                f"(allowed from {' or '.join(sorted(sources))})"
            )
        conn.execute(
            "UPDATE requests SET state = ?, reason = ?, updated = ?, "
            "attempts = attempts + ? WHERE id = ?",
            (target, _one_line(reason), now(), int(name == "start"), request_id),
        )


def _one_line(reason: str | None) -> str | None:
    if reason is None:
        return None
    lines = str(reason).strip().splitlines()
    return lines[0] if lines else ""


_COLUMNS = "body, state, reason, attempts, created, updated, sender"


def _entry(row: tuple[Any, ...]) -> LedgerEntry:
    body, state, reason, attempts, created, updated, sender = row
    return LedgerEntry(ForgetRequest.from_json(body), state, reason, int(attempts), created,
                       updated, sender)


def _content(request: ForgetRequest) -> str:
    """Canonical JSON of what a request forgets: equal content, equal text."""
    return json.dumps(request.content(), sort_keys=True, separators=(",", ":"))
