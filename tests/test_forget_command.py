"""The `fedunlearn forget` command: one request in the outbox, or one line and exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedunlearn.commands.forget import forget_command
from fedunlearn.outbox import Outbox


def test_forget_command_adds_a_client_request(tmp_path: Path, capsys) -> None:
    path = tmp_path / "outbox.sqlite"
    base = ["--outbox", str(path), "--client", "3"]
    assert forget_command([*base, "--kind", "instance", "--ids", "7,2,7"]) == 0
    assert forget_command([*base, "--kind", "instance", "--fraction", "0.1", "--seed", "5"]) == 0
    assert forget_command([*base, "--kind", "class", "--class", "4"]) == 0
    assert forget_command([*base, "--kind", "client"]) == 0
    printed = capsys.readouterr().out.split()
    with Outbox(path) as box:
        requests = box.unsent()
    assert [r.request_id for r in requests] == printed
    assert all(len(i) == 32 for i in printed) and len(set(printed)) == 4
    assert all(r.origin == "client" and r.client == 3 for r in requests)
    ids, fraction, cls, client = requests
    assert (ids.kind, ids.ids, ids.fraction) == ("instance", (2, 7), None)
    assert (fraction.fraction, fraction.clients, fraction.seed) == (0.1, (3,), 5)
    assert (cls.kind, cls.cls) == ("class", 4)
    assert (client.kind, client.cls, client.ids) == ("client", None, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client", "1", "--kind", "client"], "the following arguments are required: --outbox"),
        (["--kind", "client"], "required: --client"),
        (["--client", "1", "--kind", "all"], "argument --kind: invalid choice: 'all'"),
        (["--client", "x", "--kind", "client"], "argument --client: invalid int value: 'x'"),
        (["--client", "-1", "--kind", "client"], "client must be in [0, 2^63 - 1], got -1"),
        (["--client", "1", "--kind", "class"], "a class request needs a class"),
        (["--client", "1", "--kind", "client", "--class", "2"], "a client request takes no class"),
        (["--client", "1", "--kind", "backdoor", "--ids", "1"], "a backdoor request takes no ids"),
        (["--client", "1", "--kind", "instance"], "needs either ids or a fraction"),
        (
            ["--client", "1", "--kind", "instance", "--ids", "1", "--fraction", "0.5"],
            "needs either ids or a fraction, not both or neither",
        ),
        (["--client", "1", "--kind", "instance", "--ids", "1,b"], "comma-separated sample ids"),
        (["--client", "1", "--kind", "instance", "--ids=-1,2"],
         "ids entry must be in [0, 2^63 - 1], got -1"),
        (["--client", "1", "--kind", "instance", "--ids", ","], "ids is empty"),
        (["--client", "1", "--kind", "instance", "--ids", "99999999999999999999999"],
         "ids entry must be in [0, 2^63 - 1], got 99999999999999999999999"),
        (["--client", "99999999999999999999999", "--kind", "client"],
         "client must be in [0, 2^63 - 1]"),
        (["--kind", "client"] + ["--cancel"], "expected one argument"),
        (
            ["--client", "1", "--kind", "instance", "--fraction", "1.5"],
            "fraction must be in (0, 1], got 1.5",
        ),
        (["--client", "1", "--kind", "class", "--class", "1", "--bogus"], "unrecognized argum"),
        (["--client", "1", "--kind", "client", "--out", "x"], "unrecognized arguments: --out"),
    ],
)
def test_forget_command_errors(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    path = tmp_path / "outbox.sqlite"
    argv = args if "--outbox" in message else ["--outbox", str(path), *args]
    assert forget_command(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("fedunlearn forget: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1
    if path.exists():  # nothing was recorded
        with Outbox(path) as box:
            assert box.all() == []


def test_forget_command_unusable_outbox(tmp_path: Path, capsys) -> None:
    # A folder where the file should be: one line, exit 2, no traceback.
    argv = ["--outbox", str(tmp_path), "--client", "0", "--kind", "client"]
    assert forget_command(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedunlearn forget: error: cannot use the outbox {tmp_path}: ")
    assert err.count("\n") == 1


def test_forget_command_help(capsys) -> None:
    assert forget_command(["--help"]) == 0
    assert "usage: fedunlearn forget" in capsys.readouterr().out


def test_cancel_removes_an_unsent_request(tmp_path: Path, capsys) -> None:
    path = tmp_path / "outbox.sqlite"
    assert forget_command(["--outbox", str(path), "--client", "1", "--kind", "client"]) == 0
    first = capsys.readouterr().out.strip()
    assert forget_command(["--outbox", str(path), "--client", "1", "--kind", "class",
                           "--class", "3"]) == 0
    second = capsys.readouterr().out.strip()
    assert forget_command(["--outbox", str(path), "--cancel", first]) == 0
    assert capsys.readouterr().out.strip() == f"cancelled {first}"
    with Outbox(path) as box:
        assert [r.request_id for r in box.unsent()] == [second]
        box.mark_sent([second])
    # Unknown, already cancelled, or already sent: one line, exit 2, nothing changes.
    for request_id, message in ((first, "unknown request id"), ("nope", "unknown request id"),
                                (second, "was already sent")):
        assert forget_command(["--outbox", str(path), "--cancel", request_id]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    with Outbox(path) as box:
        assert [e.request.request_id for e in box.all()] == [second]


def test_the_outbox_knows_whose_it_is(tmp_path: Path, capsys) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        assert box.partition() is None
        box.claim(2)  # what the ClientApp does on every poll
        assert box.partition() == 2
    assert forget_command(["--outbox", str(path), "--client", "3", "--kind", "client"]) == 2
    assert "this outbox belongs to client 2, not client 3" in capsys.readouterr().err
    assert forget_command(["--outbox", str(path), "--client", "2", "--kind", "client"]) == 0


def test_forget_does_not_import_torch(tmp_path: Path) -> None:
    # Writing one row must not cost torch's import (seconds, hundreds of MB).
    # Nor must looking at the requests and their receipts.
    box = str(tmp_path / "o.sqlite")
    code = ("import sys; from fedunlearn.cli import main; "
            f"rc = main(['forget', '--outbox', {box!r}, '--client', '0', '--kind', 'client']) "
            f"or main(['forget', '--outbox', {box!r}, '--status']); "
            "sys.exit(10 if 'torch' in sys.modules else rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _done(path: Path, tmp_path: Path) -> tuple[str, str, Path]:
    """An outbox with an unsent request, a sent one, and a done one whose receipt the
    server sealed with a real key; returns the ids and the public key's file."""
    from fedunlearn.receipts import load_or_create_key, seal, write_public_key
    from fedunlearn.requests import ForgetRequest

    key = load_or_create_key(tmp_path / "state")
    public = write_public_key(key, tmp_path / "server.pub")
    unsent = ForgetRequest(request_id="u" * 32, kind="client", client=1, origin="client")
    sent = ForgetRequest(request_id="s" * 32, kind="class", cls=3, client=1, origin="client")
    done = ForgetRequest(request_id="d" * 32, kind="backdoor", client=1, origin="client")
    receipt = seal({"request": json.loads(done.to_json()), "method": "NoT",
                    "model_after": "0123456789abcdef" * 4, "metrics_after": {"forget": 1.5},
                    "cost": {"bytes": 10}}, key)
    with Outbox(path) as box:
        for request in (unsent, sent, done):
            box.add(request)
        box.mark_sent([sent.request_id, done.request_id])
        box.store_receipt(done.request_id, receipt,
                          {"forget-accuracy": 12.5, "mia": 50.5, "asr": 3.0, "num-forget": 4,
                           "model-matches": 1, "signature-ok": 1})
    return sent.request_id, done.request_id, public


def test_status_lists_every_request_with_its_receipt(tmp_path: Path, capsys) -> None:
    path = tmp_path / "outbox.sqlite"
    sent, done, _ = _done(path, tmp_path)
    assert forget_command(["--outbox", str(path), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{'u' * 32}  client (client 1)  unsent",
        f"{sent}  class 3 (client 1)  sent",
        f"{done}  backdoor (client 1)  done  NoT  model 0123456789ab  forget acc 12.5%  "
        "MIA 50.5%  ASR 3.0%  model ok  signature ok",
    ]


def test_receipt_prints_what_the_server_signed(tmp_path: Path, capsys) -> None:
    from fedunlearn.commands.receipt import receipt_command

    path = tmp_path / "outbox.sqlite"
    sent, done, public = _done(path, tmp_path)
    assert forget_command(["--outbox", str(path), "--receipt", done]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["request"]["request_id"] == done
    printed = tmp_path / "receipt.json"
    printed.write_text(out)
    assert receipt_command(["verify", str(printed), "--public-key", str(public)]) == 0
    assert capsys.readouterr().out.strip() == "receipt verified (signature)"
    # One edited byte no longer verifies: the printed receipt is the signed one.
    printed.write_text(out.replace('"forget": 1.5', '"forget": 1.6'))
    assert receipt_command(["verify", str(printed), "--public-key", str(public)]) == 2
    capsys.readouterr()
    # A request without a receipt, an unknown id, a missing outbox: one line, exit 2.
    for argv, message in (([str(path), "--receipt", sent], f"no receipt for request '{sent}'"),
                          ([str(path), "--receipt", "nope"], "no receipt for request 'nope'"),
                          ([str(tmp_path / "none.sqlite"), "--status"], "no outbox at"),
                          ([str(path), "--status", "--receipt", done], "not allowed with")):
        assert forget_command(["--outbox", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and message in captured.err
        assert captured.err.startswith("fedunlearn forget: error: ")
        assert captured.err.count("\n") == 1
    assert not (tmp_path / "none.sqlite").exists()  # looking never creates an outbox
