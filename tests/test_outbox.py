"""The client outbox: durable, idempotent, knows whose it is."""

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
