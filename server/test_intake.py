"""Request intake: every node submission is recorded or rejected, never fatal."""

import json

import pytest

from fedunlearn.ledger import Ledger
from fedunlearn.requests import ForgetRequest, new_request_id
from server.intake import intake

CREATED = "2026-01-02T03:04:05+00:00"


def body(**fields: object) -> str:
    base = {"request_id": new_request_id(), "kind": "client", "client": 1, "created": CREATED,
            "origin": "client"}
    return json.dumps({**base, **fields})


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as led:
        yield led


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (body(kind="instance", ids=[99999999999999999999999]), "ids entry must be in"),
        (body(client=99999999999999999999999), "client must be in"),
        (body(client=0), "client 1 sent a request in the name of client 0"),
        ("{not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("\ud800", "not valid JSON"),
        (json.dumps({"request_id": "x"}), "request lacks field(s)"),
        (body(kind="instance", ids=None, fraction=1e308 * 10), "fraction must be in"),
    ],
)
def test_hostile_submissions_are_rejected_not_raised(ledger, text, reason) -> None:
    outcome = intake(ledger, 1, "key", text)
    assert outcome.startswith("rejected: ") and reason in outcome
    (rejection,) = ledger.rejections()
    assert rejection.sender == "client:1" and reason in rejection.reason
    assert ledger.all() == []


def test_a_forged_duplicate_leaves_the_genuine_request_alone(ledger) -> None:
    genuine = ForgetRequest(request_id=new_request_id(), kind="class", client=0, cls=3,
                            origin="client")
    assert intake(ledger, 0, genuine.request_id, genuine.to_json()) == "recorded"
    assert intake(ledger, 0, genuine.request_id, genuine.to_json()) == "known"
    # Client 1 re-sends the id in its own name, then with client 0's content.
    forged = json.loads(genuine.to_json()) | {"client": 1}
    outcome = intake(ledger, 1, genuine.request_id, json.dumps(forged))
    assert outcome == f"rejected: request id '{genuine.request_id}' is already recorded " \
                      "from client:0"
    outcome = intake(ledger, 1, genuine.request_id, genuine.to_json())
    assert "in the name of client 0" in outcome
    entry = ledger.get(genuine.request_id)
    assert (entry.request, entry.state, entry.sender) == (genuine, "received", "client:0")
    assert [r.request_id for r in ledger.rejections()] == [genuine.request_id] * 2


def test_a_scenario_form_from_a_node_is_revalidated_as_a_client_request(ledger) -> None:
    # A federation-wide instance draw is the scenario's to make, not a node's.
    text = body(kind="instance", fraction=0.5, clients=[0, 1], origin="scenario")
    assert "may draw only from its own samples" in intake(ledger, 1, "k", text)
