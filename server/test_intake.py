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


def test_take_requests_records_acks_and_survives_a_rogue(ledger, fake_grid) -> None:
    """The whole poll over a grid of built replies: node 7 is honest, node 8 is not."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedunlearn import protocol as P
    from fedunlearn.config import compose
    from fedunlearn.settings import Job
    from server.intake import scheduled_request, take_requests

    genuine = ForgetRequest(request_id=new_request_id(), kind="class", client=0, cls=2,
                            origin="client")
    acked: dict[int, list[str]] = {}

    def answer(msg):
        node = msg.metadata.dst_node_id
        acks = msg.content.config_records[P.ACK]
        if acks:
            acked[node] = list(acks.values())
            return Message(RecordDict({P.FOUND: ConfigRecord()}), reply_to=msg)
        found = ({genuine.request_id: genuine.to_json()} if node == 7
                 else {"x": "{not json", genuine.request_id: genuine.to_json()})
        return Message(RecordDict({P.FOUND: ConfigRecord(found)}), reply_to=msg)

    settings = Job.from_config(compose(["scenario=class", "num_clients=2"]))
    scheduled = [scheduled_request(settings)]
    take_requests(fake_grid([7, 8], answer), {0: 7, 1: 8}, ledger, 1.0, scheduled)
    entries = ledger.all()
    # The scenario's request and client 0's; node 8's two submissions are rejections.
    assert [e.sender for e in entries] == ["scenario", "client:0"]
    assert ledger.get(genuine.request_id).sender == "client:0"
    assert len(ledger.rejections()) == 2
    # Every submission is acknowledged to the node that sent it, under its own key.
    assert acked == {7: [genuine.request_id], 8: ["x", genuine.request_id]}
    # Polled again (a restarted server): nothing is added twice.
    take_requests(fake_grid([7, 8], answer), {0: 7, 1: 8}, ledger, 1.0, scheduled)
    assert len(ledger.all()) == 2


def test_poll_targets_cover_every_node_within_a_bound_and_add_those_that_wait() -> None:
    from server.intake import poll_targets

    active = {pid: 1000 + pid for pid in range(10) if pid != 4}  # 9 nodes, 4 forgotten
    assert poll_targets(active, 1, None) == active
    assert poll_targets(active, 3, 9) == active
    seen: set[int] = set()
    for rnd in range(1, 4):  # ceil(9 / 3) rounds reach every node
        polled = poll_targets(active, rnd, 3)
        assert len(polled) == 3 and set(polled.items()) <= set(active.items())
        seen |= set(polled)
    assert seen == set(active)
    # A node that said requests wait is asked in the very next round, window or not.
    window = set(poll_targets(active, 5, 3))
    outside = next(pid for pid in active if pid not in window)
    polled = poll_targets(active, 5, 3, {active[outside], 99999})
    assert set(polled) == window | {outside}
