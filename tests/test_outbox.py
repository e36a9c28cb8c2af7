"""The client outbox: durable, idempotent, knows whose it is."""

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedunlearn.outbox import Outbox, OutboxError
from fedunlearn.requests import ForgetRequest


def _req(request_id: str, **fields: object) -> ForgetRequest:
    return ForgetRequest(
        **{"request_id": request_id, "kind": "client", "client": 1, "origin": "client", **fields}
    )


def test_add_unsent_mark_sent(tmp_path: Path) -> None:
    with Outbox(tmp_path / "box" / "outbox.sqlite") as box:
        assert box.unsent() == [] and box.all() == []
        a, b, c = _req("a"), _req("b", kind="class", cls=2), _req("c", kind="backdoor")
        for request in (a, b, c):
            box.add(request)
        box.add(a)  # the same request again: no duplicate
        assert box.unsent() == [a, b, c]
        box.mark_sent(["a", "c"])
        assert box.unsent() == [b]
        entries = box.all()
        assert [e.request for e in entries] == [a, b, c]
        assert [e.sent is None for e in entries] == [False, True, False]
        first_sent = entries[0].sent
        box.mark_sent(["a"])  # already sent: keeps its first time
        box.mark_sent([])
        assert box.all()[0].sent == first_sent


def test_conflicts_and_unknown_ids(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as box:
        box.add(_req("a"))
        with pytest.raises(OutboxError, match="'a' is already in the outbox with other content"):
            box.add(_req("a", kind="backdoor"))
        with pytest.raises(OutboxError, match="unknown request id\\(s\\) in the outbox: x, y"):
            box.mark_sent(["a", "x", "y"])
        assert box.unsent() == [_req("a")]  # nothing was marked


def test_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    child = textwrap.dedent(
        """
        import os, signal, sys
        from fedunlearn.outbox import Outbox
        from fedunlearn.requests import ForgetRequest
        box = Outbox(sys.argv[1])
        for name in ("a", "b"):
            box.add(ForgetRequest(request_id=name, kind="client", client=1, origin="client"))
        box.mark_sent(["a"])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode < 0, done.stderr
    with Outbox(path) as box:
        assert [r.request_id for r in box.unsent()] == ["b"]
        assert len(box.all()) == 2


def test_claim_and_cancel(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as box:
        assert box.partition() is None
        box.claim(2)
        box.claim(3)  # the ClientApp records it on every poll; the last one holds
        assert box.partition() == 3
        box.add(_req("a"))
        box.add(_req("b", kind="backdoor"))
        box.mark_sent(["b"])
        assert box.cancel("a") == _req("a")
        with pytest.raises(OutboxError, match="unknown request id 'a' in the outbox"):
            box.cancel("a")
        with pytest.raises(OutboxError, match="'b' was already sent .*no longer be cancelled"):
            box.cancel("b")
        assert [e.request.request_id for e in box.all()] == ["b"]


def _receipt(request: ForgetRequest, model: str = "ab" * 32) -> dict:
    # The shape the server seals (server/answers.py); the outbox checks only the request.
    return {"request": json.loads(request.to_json()), "method": "NoT", "model_after": model,
            "metrics_after": {"forget": 12.5}, "signature": "00"}


def test_deleted_requests_are_kept_once(tmp_path: Path) -> None:
    a, b = _req("a"), _req("b", kind="class", cls=2)
    with Outbox(tmp_path / "outbox.sqlite") as box:
        assert box.deleted() == []
        for request in (a, b, a):
            box.record_deleted(request.to_json())
        assert box.deleted() == [a.to_json(), b.to_json()]
        with pytest.raises(OutboxError, match="'a' is already recorded deleted with other"):
            box.record_deleted(_req("a", kind="backdoor").to_json())
    with Outbox(tmp_path / "outbox.sqlite") as box:  # durable
        assert [ForgetRequest.from_json(t) for t in box.deleted()] == [a, b]


def test_receipts_are_idempotent_and_never_replaced(tmp_path: Path) -> None:
    a = _req("a")
    with Outbox(tmp_path / "outbox.sqlite") as box:
        assert box.receipt("a") is None and box.self_check("a") is None
        box.store_receipt("a", _receipt(a), {"mia": 51.0, "num-forget": 3})
        # The same receipt again (a repeated delete notice): the first check is kept.
        box.store_receipt("a", _receipt(a), {"mia": 99.0, "num-forget": 3})
        assert box.receipt("a") == _receipt(a)
        assert box.self_check("a") == {"mia": 51.0, "num-forget": 3}
        with pytest.raises(OutboxError, match="another receipt is already stored for request 'a'"):
            box.store_receipt("a", _receipt(a, model="cd" * 32), {})
        with pytest.raises(OutboxError, match="receipt for 'b' is for request 'a'"):
            box.store_receipt("b", _receipt(a), {})
        with pytest.raises(OutboxError, match="names no valid request"):
            box.store_receipt("a", {"method": "NoT"}, {})
        with pytest.raises(OutboxError, match="not storable as JSON"):
            box.store_receipt("c", _receipt(_req("c")), {"mia": float("nan")})
        assert box.receipt("a") == _receipt(a) and box.receipt("c") is None


def test_status_unsent_sent_done_and_server_scheduled(tmp_path: Path) -> None:
    a, b, c = _req("a"), _req("b", kind="class", cls=2), _req("c", kind="backdoor")
    scheduled = _req("s", origin="scenario")
    with Outbox(tmp_path / "outbox.sqlite") as box:
        for request in (a, b, c):
            box.add(request)
        box.mark_sent(["b", "c"])
        box.store_receipt("c", _receipt(c), {"asr": 4.0})
        box.store_receipt("s", _receipt(scheduled), {"mia": 50.0})
        status = box.status()
    assert [(s.request, s.state) for s in status] == [
        (a, "unsent"), (b, "sent"), (c, "done"), (scheduled, "done")]
    assert [s.receipt is None for s in status] == [True, True, False, False]
    assert status[2].self_check == {"asr": 4.0}
    assert status[3].receipt == _receipt(scheduled)


def test_an_old_outbox_gains_the_new_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    # The schema before deletions and receipts were kept, with one sent request.
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE outbox (id TEXT PRIMARY KEY, body TEXT NOT NULL, "
            "added TEXT NOT NULL, sent TEXT);"
            "CREATE TABLE node (key TEXT PRIMARY KEY, value INTEGER NOT NULL);")
        conn.execute("INSERT INTO outbox VALUES (?, ?, ?, ?)",
                     ("a", _req("a").to_json(), "2026-01-01T00:00:00.000+00:00",
                      "2026-01-01T00:00:01.000+00:00"))
    with Outbox(path) as box:
        assert [(s.request, s.state) for s in box.status()] == [(_req("a"), "sent")]
        box.record_deleted(_req("a").to_json())
        box.store_receipt("a", _receipt(_req("a")), {"mia": 50.0})
        assert box.deleted() == [_req("a").to_json()]
        assert [s.state for s in box.status()] == ["done"]
