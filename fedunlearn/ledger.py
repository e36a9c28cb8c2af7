"""The server's durable record of forget requests and their receipts (embedded SQLite).

Every request the server learns of is recorded once, by id, and moves through

``received -> running -> done``, or to ``failed`` (with a reason) from
``received`` or ``running``.

A request left ``running`` by a crashed server is still :meth:`Ledger.pending`
and is resumed by the next server; ``done`` and ``failed`` requests are never
returned again, so never repeated. Each unlearning method that ran for a
request leaves a receipt (a JSON object the caller builds, e.g. with the
:func:`digest` of the model before and after).

The file uses SQLite's write-ahead log with ``synchronous=FULL``: a write is on
disk when its transaction returns, so a finished request survives a crash or a
power cut right after.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np

from fedunlearn.requests import ForgetRequest

__all__ = [
    "STATES",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "connect",
    "digest",
    "transaction",
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
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS receipts (
    request_id TEXT NOT NULL REFERENCES requests (id),
    method     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created    TEXT NOT NULL,
    PRIMARY KEY (request_id, method)
);
"""


class LedgerError(RuntimeError):
    """An unknown request id or a transition its state does not allow (one line)."""


def _now() -> str:
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
    path.parent.mkdir(parents=True, exist_ok=True)
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
    server's ledger and a client's outbox (subclasses set ``SCHEMA``)."""

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


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded request and where it stands.

    Attributes
    ----------
    request : ForgetRequest
    state : str
        One of :data:`STATES`.
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

    # ---- writes --------------------------------------------------------------
    def record(self, request: ForgetRequest) -> bool:
        """Record a request as ``received``.

        Returns
        -------
        bool
            True if the id was new; False if it was already recorded, in which
            case nothing changes (a request is never duplicated or reset).
        """
        now = _now()
        with transaction(self._conn) as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO requests "
                "(id, kind, client, body, state, reason, created, updated, attempts) "
                "VALUES (?, ?, ?, ?, 'received', NULL, ?, ?, 0)",
                (request.request_id, request.kind, request.client, request.to_json(), now, now),
            )
        return cursor.rowcount == 1

    def refuse(self, request: ForgetRequest | str, reason: str) -> None:
        """Record a request (when given one) and mark it ``failed`` with ``reason``.

        Refusing an already failed request keeps its first reason.

        Raises
        ------
        LedgerError
            The id is unknown (given as a string) or the request is ``done``.
        """
        if isinstance(request, ForgetRequest):
            self.record(request)
            request_id = request.request_id
        else:
            request_id = request
        with transaction(self._conn) as conn:
            if self._state(conn, request_id) != "failed":
                self._move(conn, request_id, "fail", reason)

    def start(self, request_id: str) -> None:
        """``received`` or ``running`` (resumed after a crash) -> ``running``; attempts + 1."""
        self._transition(request_id, "start")

    def finish(self, request_id: str) -> None:
        """``running`` -> ``done``."""
        self._transition(request_id, "finish")

    def fail(self, request_id: str, reason: str) -> None:
        """``received`` or ``running`` -> ``failed`` with a one-line ``reason``."""
        self._transition(request_id, "fail", reason)

    def add_receipt(self, request_id: str, method: str, receipt: Mapping[str, Any]) -> None:
        """Store the receipt of one method for a request; re-adding replaces it.

        Parameters
        ----------
        request_id : str
            A recorded request.
        method : str
            The unlearning method, e.g. ``"NoT"``.
        receipt : mapping
            JSON-serializable; e.g. timings, bytes, and model :func:`digest` values.
        """
        if not isinstance(receipt, Mapping):
            raise LedgerError(f"a receipt must be a mapping, got {type(receipt).__name__}")
        body = json.dumps(dict(receipt), sort_keys=True)
        with transaction(self._conn) as conn:
            self._state(conn, request_id)  # raises on an unknown id
            conn.execute(
                "INSERT INTO receipts (request_id, method, body, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (request_id, method) DO UPDATE SET "
                "body = excluded.body, created = excluded.created",
                (request_id, method, body, _now()),
            )

    # ---- reads ---------------------------------------------------------------
    def get(self, request_id: str) -> LedgerEntry:
        """The entry of one request; :class:`LedgerError` when the id is unknown."""
        row = self._conn.execute(
            "SELECT body, state, reason, attempts, created, updated FROM requests WHERE id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            raise LedgerError(f"unknown request id '{request_id}'")
        return _entry(row)

    def pending(self) -> list[LedgerEntry]:
        """Requests still to carry out (``received`` or ``running``), oldest first."""
        return self._entries("WHERE state IN ('received', 'running')")

    def all(self) -> list[LedgerEntry]:
        """Every recorded request, oldest first."""
        return self._entries("")

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
            "SELECT body, state, reason, attempts, created, updated FROM requests "
            f"{where} ORDER BY rowid"
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
            (target, _one_line(reason), _now(), int(name == "start"), request_id),
        )


def _one_line(reason: str | None) -> str | None:
    if reason is None:
        return None
    lines = str(reason).strip().splitlines()
    return lines[0] if lines else ""


def _entry(row: tuple[Any, ...]) -> LedgerEntry:
    body, state, reason, attempts, created, updated = row
    return LedgerEntry(ForgetRequest.from_json(body), state, reason, int(attempts), created,
                       updated)


def digest(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 of a model's weights, for receipts ("model before and after").

    Covers each tensor's name, dtype, shape and bytes, in sorted name order, so
    it does not depend on the dict's order. A torch tensor and the numpy array
    with the same dtype, shape and values give the same digest.

    Parameters
    ----------
    state_dict : mapping of str to torch.Tensor or numpy.ndarray
        E.g. ``model.state_dict()`` or Flower's ``ArrayRecord.to_numpy_ndarrays``
        zipped with names.

    Returns
    -------
    str
        64 hex digits.
    """
    sha = hashlib.sha256()
    for name in sorted(state_dict):
        dtype, shape, data = _tensor_bytes(name, state_dict[name])
        # Length-prefixed header: no two different (name, dtype, shape) sequences collide.
        header = json.dumps([name, dtype, list(shape), len(data)])
        sha.update(len(header).to_bytes(8, "little") + header.encode())
        sha.update(data)
    return sha.hexdigest()


def _tensor_bytes(name: str, value: Any) -> tuple[str, tuple[int, ...], bytes]:
    if isinstance(value, np.ndarray):
        array = np.asarray(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        if array.dtype.byteorder == ">":  # hash the little-endian bytes torch would have
            array = array.astype(array.dtype.newbyteorder("<"))
        return array.dtype.name, tuple(array.shape), array.tobytes()
    # Imported here: numpy-only callers need not pay for torch.
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"digest: '{name}' is a {type(value).__name__}, not a tensor or array")
    tensor = value.detach().to("cpu").contiguous()
    # Raw bytes through a uint8 view: works for dtypes numpy lacks (bfloat16).
    data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), data
