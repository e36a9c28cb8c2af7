"""The request ledger: state machine, idempotence, receipts, crash survival."""

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedunlearn.ledger import STATES, Ledger, LedgerError, RequestConflict
from fedunlearn.requests import ForgetRequest


def _req(request_id: str, client: int = 0) -> ForgetRequest:
    return ForgetRequest(request_id=request_id, kind="client", client=client)


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "ledger.sqlite") as led:
        yield led


def test_file_is_durable_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.sqlite"
    with Ledger(path) as led:
        assert path.is_file()
        assert led._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"requests", "receipts"} <= tables
    conn.close()


def test_happy_path(ledger: Ledger) -> None:
    request = ForgetRequest(request_id="r", kind="instance", client=2, ids=(4, 9))
    assert ledger.record(request)
    entry = ledger.get("r")
    assert (entry.request, entry.state, entry.reason, entry.attempts) == (
        request, "received", None, 0,
    )
    ledger.start("r")
    assert (ledger.get("r").state, ledger.get("r").attempts) == ("running", 1)
    ledger.finish("r")
    assert ledger.get("r").state == "done"
    assert ledger.pending() == []
    assert [e.request for e in ledger.all()] == [request]
    assert STATES == ("received", "running", "done", "failed")


def test_record_is_idempotent(ledger: Ledger) -> None:
    assert ledger.record(_req("a"), "client:0")
    ledger.start("a")
    # The same request again neither duplicates nor resets it.
    assert not ledger.record(_req("a"), "client:0")
    entry = ledger.get("a")
    assert (entry.state, entry.attempts, entry.sender) == ("running", 1, "client:0")
    assert len(ledger.all()) == 1


def test_a_forged_duplicate_never_changes_the_genuine_request(ledger: Ledger) -> None:
    genuine = ForgetRequest(request_id="a", kind="instance", client=0, ids=(1, 2))
    assert ledger.record(genuine, "client:0")
    # Another sender, or other content under the same id: refused, nothing changes.
    with pytest.raises(RequestConflict, match="'a' is already recorded from client:0"):
        ledger.record(genuine, "client:1")
    forged = ForgetRequest(request_id="a", kind="instance", client=0, ids=(1,))
    with pytest.raises(RequestConflict, match="'a' is already recorded with other content"):
        ledger.record(forged, "client:0")
    entry = ledger.get("a")
    assert (entry.request, entry.state, entry.sender) == (genuine, "received", "client:0")
    # The refused submission is kept as a row of its own.
    ledger.reject(forged.to_json(), "client:1", "request id 'a' is already recorded", "a")
    (rejection,) = ledger.rejections()
    assert (rejection.request_id, rejection.sender, rejection.body) == (
        "a", "client:1", forged.to_json())
    assert ledger.get("a").state == "received" and len(ledger.all()) == 1


def test_find_by_content_and_sender(ledger: Ledger) -> None:
    first = ForgetRequest(request_id="a", kind="class", client=0, cls=3)
    ledger.record(first, "scenario")
    again = ForgetRequest(request_id="b", kind="class", client=0, cls=3)
    assert ledger.find(again, "scenario").request == first
    assert ledger.find(again, "client:0") is None
    assert ledger.find(ForgetRequest(request_id="c", kind="class", client=0, cls=4),
                       "scenario") is None


def test_reject_keeps_hostile_bodies(ledger: Ledger) -> None:
    ledger.reject("x" * 100_000, "client:3", "not JSON\nsecond line")
    ledger.reject("\ud800 broken", "client:3", "bad unicode", request_id="\ud800" * 100)
    first, second = ledger.rejections()
    assert len(first.body) == 4096 and first.reason == "not JSON"
    assert second.body.endswith(" broken") and len(second.request_id) <= 64
    assert ledger.all() == []


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0)
    try:
        path = tmp_path / "new" / "deeper" / "ledger.sqlite"
        with Ledger(path) as led:
            led.record(_req("a"))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        assert modes and all(mode == 0o600 for mode in modes.values()), modes
        for folder in (path.parent, path.parent.parent):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_an_earlier_ledger_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE requests (id TEXT PRIMARY KEY, kind TEXT NOT NULL, client INTEGER NOT NULL,
            body TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, created TEXT NOT NULL,
            updated TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE receipts (request_id TEXT NOT NULL, method TEXT NOT NULL,
            body TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (request_id, method));
    """)
    old = _req("old", client=2)
    conn.execute("INSERT INTO requests VALUES ('old', 'client', 2, ?, 'done', NULL, 't', 't', 1)",
                 (old.to_json(),))
    conn.commit()
    conn.close()
    with Ledger(path) as ledger:
        entry = ledger.get("old")
        assert (entry.request, entry.state, entry.sender) == (old, "done", "unknown")
        assert ledger.find(_req("new", client=2), "unknown").request == old


def test_running_is_resumed_with_more_attempts(ledger: Ledger) -> None:
    for name in ("a", "b", "c"):
        ledger.record(_req(name))
    ledger.start("b")
    ledger.start("b")
    ledger.start("c")
    ledger.finish("c")
    assert [e.request.request_id for e in ledger.pending()] == ["a", "b"]
    assert ledger.get("b").attempts == 2


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ([], "finish", "cannot finish request 'x': it is received (allowed from running)"),
        (["start", "finish"], "start", "cannot start request 'x': it is done"),
        (["start", "finish"], "fail", "cannot fail request 'x': it is done"),
        (["fail"], "finish", "cannot finish request 'x': it is failed"),
        (["fail"], "start", "cannot start request 'x': it is failed (allowed from received or"),
        (["fail"], "fail", "cannot fail request 'x': it is failed"),
    ],
)
def test_invalid_transitions(ledger: Ledger, setup: list[str], action: str, message: str) -> None:
    ledger.record(_req("x"))
    for step in setup:
        getattr(ledger, step)("x", *(["why"] if step == "fail" else []))
    before = ledger.get("x")
    with pytest.raises(LedgerError) as info:
        getattr(ledger, action)("x", *(["why"] if action == "fail" else []))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert ledger.get("x") == before  # the refused transition changed nothing


def test_unknown_ids(ledger: Ledger) -> None:
    for call in (
        lambda: ledger.get("nope"),
        lambda: ledger.start("nope"),
        lambda: ledger.finish("nope"),
        lambda: ledger.fail("nope", "x"),
        lambda: ledger.add_receipt("nope", "NoT", {}),
        lambda: ledger.receipts("nope"),
    ):
        with pytest.raises(LedgerError, match="unknown request id 'nope'"):
            call()


def test_fail(ledger: Ledger) -> None:
    ledger.record(_req("a"))
    ledger.start("a")
    ledger.fail("a", "out of memory\ntraceback...")
    entry = ledger.get("a")
    assert (entry.state, entry.reason) == ("failed", "out of memory")
    ledger.record(_req("b"))
    ledger.fail("b", "client 9 does not exist")  # from received
    assert (ledger.get("b").state, ledger.get("b").reason) == ("failed", "client 9 does not exist")
    assert ledger.pending() == []


def test_receipts(ledger: Ledger) -> None:
    ledger.record(_req("a"))
    ledger.record(_req("b"))
    assert ledger.receipts("a") == {}
    ledger.add_receipt("a", "NoT", {"before": "x", "after": "y", "seconds": 1.5})
    ledger.add_receipt("a", "Retrain", {"before": "x", "after": "z"})
    ledger.add_receipt("b", "NoT", {"n": 1})
    with pytest.raises(LedgerError, match="'a' already has a NoT receipt"):
        ledger.add_receipt("a", "NoT", {"before": "x", "after": "w"})  # never replaced
    assert ledger.receipts("a") == {
        "NoT": {"before": "x", "after": "y", "seconds": 1.5},
        "Retrain": {"before": "x", "after": "z"},
    }
    assert ledger.receipts("b") == {"NoT": {"n": 1}}
    assert [r.get("n") for r in ledger.chain()] == [None, None, 1]
    with pytest.raises(LedgerError, match="a receipt must be a mapping, got list"):
        ledger.add_receipt("a", "FT", [1, 2])  # type: ignore[arg-type]


# ---- survival across processes ----------------------------------------------------
CHILD_CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from fedunlearn.ledger import Ledger
    from fedunlearn.requests import ForgetRequest

    ledger = Ledger(sys.argv[1])
    done = ForgetRequest(request_id="done-1", kind="client", client=0)
    resumed = ForgetRequest(request_id="run-1", kind="class", client=1, cls=3)
    assert ledger.record(done) and not ledger.record(done)
    ledger.start("done-1")
    ledger.add_receipt("done-1", "NoT", {"after": "abc"})
    ledger.finish("done-1")
    ledger.record(resumed)
    ledger.start("run-1")
    # A crash mid-run: no finish, no close, no clean interpreter exit.
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_survives_a_crashed_writer(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    child = subprocess.run([sys.executable, "-c", CHILD_CRASH, str(path)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    with Ledger(path) as ledger:
        assert ledger.get("done-1").state == "done"
        assert ledger.receipts("done-1") == {"NoT": {"after": "abc"}}
        # The interrupted request is resumed, the finished one never repeated.
        assert [(e.request.request_id, e.state, e.attempts) for e in ledger.pending()] == [
            ("run-1", "running", 1)
        ]
        assert ledger.get("run-1").request.cls == 3
        assert not ledger.record(_req("done-1"))
        assert not ledger.record(ForgetRequest(request_id="run-1", kind="class", client=1, cls=3))
        assert len(ledger.all()) == 2
        ledger.start("run-1")
        ledger.finish("run-1")
        assert ledger.get("run-1").attempts == 2
        assert ledger.pending() == []


CHILD_READ = textwrap.dedent(
    """
    import json, sys
    from fedunlearn.ledger import Ledger

    with Ledger(sys.argv[1]) as ledger:
        seen = {e.request.request_id: e.state for e in ledger.all()}
        pending = [e.request.request_id for e in ledger.pending()]
        for request_id in pending:  # resume what the other process left
            ledger.start(request_id)
            ledger.finish(request_id)
        print(json.dumps({"seen": seen, "pending": pending}))
    """
)


def test_a_new_process_sees_and_resumes_our_writes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.record(_req("a"))
        ledger.start("a")
        ledger.finish("a")
        ledger.record(_req("b"))
        ledger.start("b")
        ledger.record(_req("c"))
        # This ledger stays open, as a live server's would.
        child = subprocess.run([sys.executable, "-c", CHILD_READ, str(path)],
                               capture_output=True, text=True, timeout=120)
        assert child.returncode == 0, child.stderr
        report = json.loads(child.stdout)
        assert report == {"seen": {"a": "done", "b": "running", "c": "received"},
                          "pending": ["b", "c"]}
        # The child's writes are visible here without reopening.
        assert [(e.request.request_id, e.state, e.attempts) for e in ledger.all()] == [
            ("a", "done", 1), ("b", "done", 2), ("c", "done", 1),
        ]
        assert ledger.pending() == []


def test_sealed_receipts_form_a_verifiable_chain(ledger: Ledger, tmp_path: Path) -> None:
    from fedunlearn.receipts import load_or_create_key, verify_chain

    key = load_or_create_key(tmp_path / "state")
    ledger.record(_req("a"))
    ledger.record(_req("b"))
    first = ledger.add_receipt("a", "NoT", {"after": "y"}, key)
    ledger.add_receipt("b", "FT", {"after": "z"}, key)
    assert first["previous"] == "0" * 64 and ledger.receipts("a")["NoT"] == first
    assert verify_chain(ledger.chain(), key.public_key()) == 2


def test_receipts_of_one_pass_are_sealed_together_or_not_at_all(
        ledger: Ledger, tmp_path: Path) -> None:
    from fedunlearn.receipts import load_or_create_key, verify_chain

    key = load_or_create_key(tmp_path / "state")
    for request_id in "abc":
        ledger.record(_req(request_id))
    ledger.add_receipt("c", "NoT", {"after": "x"}, key)
    # The second item conflicts: nothing of the pass enters the chain.
    with pytest.raises(LedgerError, match="already has a NoT receipt"):
        ledger.add_receipts([("a", "NoT", {"after": "y"}), ("c", "NoT", {"after": "y"})], key)
    assert ledger.receipts("a") == {} and len(ledger.chain()) == 1
    sealed = ledger.add_receipts([("a", "NoT", {"after": "y"}), ("b", "NoT", {"after": "y"})],
                                 key)
    from fedunlearn.receipts import receipt_hash

    assert sealed[1]["previous"] == receipt_hash(sealed[0])  # chained in order
    assert verify_chain(ledger.chain(), key.public_key()) == 3


def test_deletion_confirmations_keep_the_requesters_self_check(ledger: Ledger) -> None:
    ledger.record(_req("a"))
    ledger.confirm("a", 2)
    ledger.confirm("a", 0)
    assert ledger.confirmations("a") == {0: None, 2: None}
    ledger.confirm("a", 0, {"forget-accuracy": 0.25})
    ledger.confirm("a", 0, {"forget-accuracy": 0.9})  # a repeat does not rewrite it
    assert ledger.confirmations("a") == {0: {"forget-accuracy": 0.25}, 2: None}
    with pytest.raises(LedgerError, match="unknown request id"):
        ledger.confirm("nope", 0)
