"""A rogue node attacks a real federation (SuperLink and SuperNodes on 127.0.0.1).

Node 1 runs a ClientApp variant this test builds (:func:`client.rogue.rogue_app`):
every training reply it sends has all weights 0.5 and claims 10^12 examples, and
its answer to the request poll carries hostile bodies (numbers past 2^63, a
request in client 0's name, text that is not JSON). Meanwhile client 0's user
records a genuine request. The federation must finish training with the rogue's
replies refused, keep every hostile body as a rejection (acknowledged, never
fatal), leave the genuine request alone and answer it.
"""

import json

import pytest

from fedunlearn.config import compose, fingerprint
from fedunlearn.ledger import Ledger
from fedunlearn.outbox import Outbox
from fedunlearn.requests import new_request_id
from fedunlearn.runtime.cluster import outbox_path
from fedunlearn.runtime.deployment import deploy
from fedunlearn.runtime.flwr_cli import APP_DIR
from server.checkpoint import Checkpoint, cache_path, cached
from tests.test_deployment import assert_all_stopped, forget_half, overrides

pytestmark = pytest.mark.integration

CREATED = "2026-01-02T03:04:05+00:00"


def hostile(**fields):
    base = {"request_id": new_request_id(), "kind": "client", "client": 1, "created": CREATED,
            "origin": "client"}
    return json.dumps({**base, **fields})


def rogue_app_dir(tmp_path, bodies):
    """A Flower app whose ClientApp is the rogue variant (the ServerApp is the project's)."""
    app = tmp_path / "rogue-app"
    app.mkdir()
    pyproject = (APP_DIR / "pyproject.toml").read_text()
    assert 'clientapp = "client.app:app"' in pyproject
    (app / "pyproject.toml").write_text(
        pyproject.replace('clientapp = "client.app:app"', 'clientapp = "rogue_app:app"'))
    (app / "rogue_app.py").write_text(
        "from client.rogue import rogue_app\n"
        f"app = rogue_app({{1}}, value=0.5, num_examples=10**12, requests={bodies!r})\n")
    return app


def test_a_rogue_node_neither_crashes_nor_poisons_the_federation(tmp_path, fedunlearn_cmd):
    home = tmp_path / "flwr"
    genuine_id = forget_half(fedunlearn_cmd, home, 0)
    with Outbox(outbox_path(home, 0)) as box:
        genuine = box.unsent()[0].to_json()
    bodies = [
        hostile(kind="instance", ids=[99999999999999999999999]),  # crashed the server
        hostile(client=99999999999999999999999),                    # overflowed SQLite
        genuine,                             # client 0's own request, re-sent by node 1
        "{not json",
    ]
    args = overrides(tmp_path, f"runtime.flwr_home={home}", "scenario=none",
                     "unlearn.methods=[FT]", "unlearn.recovery_rounds=1")
    cfg = compose(args)
    result = deploy(cfg, args, tmp_path / "out", app_dir=rogue_app_dir(tmp_path, bodies))
    assert result["status"] == "finished:completed"
    assert_all_stopped(result["process_groups"])

    # Training went on with the honest node; every rogue reply was refused by its weight.
    summary = json.loads((tmp_path / "out" / "train.json").read_text())
    rogue = summary["nodes"]["1"]
    assert len(summary["refused"]) == 2  # one per round
    assert all(r["node"] == rogue and "more than the" in r["reason"]
               for r in summary["refused"])
    assert summary["test_accuracy"] > 0.3  # a model of all 0.5 weights scores ~0.1
    # The model is kept for inspection but never reused as a clean one.
    path = cache_path(cfg.cache_dir, fingerprint(cfg))
    assert Checkpoint.load(path).refused and cached(cfg.cache_dir, fingerprint(cfg)) is None

    with Ledger(tmp_path / "out" / "ledger.sqlite") as ledger:
        # The genuine request: recorded from client 0, answered, its receipt names the
        # rogue's refused recovery reply.
        entry = ledger.get(genuine_id)
        assert (entry.state, entry.sender) == ("done", "client:0")
        receipt = ledger.receipts(genuine_id)["FT"]
        assert [r["node"] for r in receipt["refused_replies"]] == [rogue]
        # Every hostile body is on file as a rejection, none as a request.
        assert [e.request.request_id for e in ledger.all()] == [genuine_id]
        reasons = sorted(r.reason for r in ledger.rejections())
        assert {r.sender for r in ledger.rejections()} == {"client:1"}
        assert len(reasons) == 4, reasons
        for needle in ("ids entry must be in", "client must be in",
                       "in the name of client 0", "not valid JSON"):
            assert any(needle in r for r in reasons), (needle, reasons)
    # Acknowledged: node 0's outbox has nothing left to send.
    assert Outbox(outbox_path(home, 0)).unsent() == []
