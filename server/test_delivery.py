"""Deletion notices and receipts reach their nodes once, again only until confirmed."""

import json

import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict

from fedunlearn import protocol as P
from fedunlearn.config import compose
from fedunlearn.federation import build_federation
from fedunlearn.ledger import Ledger
from fedunlearn.receipts import load_or_create_key
from fedunlearn.requests import ForgetRequest, scenario_request
from fedunlearn.settings import Job
from server.delivery import deliver, model_path

NODES = {0: 10, 1: 11, 2: 12}


@pytest.fixture(scope="module")
def setup():
    cfg = compose(["dataset=digits", "num_clients=3"])
    return Job.from_config(cfg), build_federation(cfg)


def answered(ledger: Ledger, out_dir, request: ForgetRequest, key) -> dict:
    """A request answered as the serve loop leaves it: model on disk, receipt sealed."""
    state = {"w": torch.arange(4.0)}
    path = model_path(out_dir, request.request_id, "NoT")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    ledger.record(request)
    ledger.start(request.request_id)
    (receipt,) = ledger.add_receipts([(request.request_id, "NoT", {"model_after": "d"})], key)
    ledger.finish(request.request_id)
    return receipt


def node_reply(lost: set[int]):
    def answer(msg: Message) -> Message | None:
        if msg.metadata.dst_node_id in lost:
            return None  # the node is offline
        reply = Message(RecordDict(), reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
        if P.RECEIPT in msg.content.config_records[P.CONFIG]:
            reply.content[P.SELF_CHECK] = MetricRecord({"forget-accuracy": 0.1})
        return reply
    return answer


def test_a_class_request_is_deleted_everywhere_and_its_receipt_checked_once(
        setup, tmp_path, fake_grid) -> None:
    settings, federation = setup
    key = load_or_create_key(tmp_path / "state")
    request = scenario_request({"kind": "class", "client": 1, "cls": 3})
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        receipt = answered(ledger, tmp_path, request, key)
        grid = fake_grid(NODES.values(), node_reply(lost={12}))
        first = deliver(grid, ledger, NODES, settings, federation, tmp_path, 1.0)
        # Node 2 never answered: it may still hold class 3 (the server keeps it out of
        # training until it confirms).
        assert (first.sent, first.confirmed, first.failed) == (3, {0, 1}, {2})
        with_receipt = [m for m in grid.sent
                        if P.RECEIPT in m.content.config_records[P.CONFIG]]
        # Only the requester gets the receipt, with the model it names.
        (to_requester,) = with_receipt
        assert to_requester.metadata.dst_node_id == NODES[1]
        sent = json.loads(str(to_requester.content.config_records[P.CONFIG][P.RECEIPT]))
        assert sent == receipt
        assert torch.equal(to_requester.content.array_records[P.ARRAYS]
                           .to_torch_state_dict()["w"], torch.arange(4.0))
        confirmed = ledger.confirmations(request.request_id)
        assert confirmed == {0: None, 1: {"forget-accuracy": pytest.approx(0.1)}}
        # Next round: only the node that was offline is asked again.
        grid = fake_grid(NODES.values(), node_reply(lost=set()))
        assert deliver(grid, ledger, NODES, settings, federation, tmp_path, 1.0).sent == 1
        assert grid.sent[0].metadata.dst_node_id == NODES[2]
        assert deliver(grid, ledger, NODES, settings, federation, tmp_path, 1.0).sent == 0
        # After a restart every notice goes out again, but no receipt already checked.
        grid = fake_grid(NODES.values(), node_reply(lost=set()))
        assert deliver(grid, ledger, NODES, settings, federation, tmp_path, 1.0,
                       again=True).sent == 3
        assert not any(P.RECEIPT in m.content.config_records[P.CONFIG] for m in grid.sent)


def test_the_research_job_sends_deletion_notices_without_receipts(
        setup, tmp_path, fake_grid) -> None:
    settings, federation = setup
    key = load_or_create_key(tmp_path / "state")
    request = scenario_request({"kind": "client", "client": 2})
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        answered(ledger, tmp_path, request, key)
        grid = fake_grid(NODES.values(), node_reply(lost=set()))
        assert deliver(grid, ledger, NODES, settings, federation, tmp_path, 1.0,
                       receipts=False).sent == 1
        (notice,) = grid.sent
        assert notice.metadata.dst_node_id == NODES[2]
        assert P.RECEIPT not in notice.content.config_records[P.CONFIG]
        assert ledger.confirmations(request.request_id) == {2: None}


def test_an_offline_node_costs_nothing_until_it_is_back(setup, tmp_path, fake_grid) -> None:
    settings, federation = setup
    key = load_or_create_key(tmp_path / "state")
    request = scenario_request({"kind": "client", "client": 2})
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        answered(ledger, tmp_path, request, key)
        # The client forgotten whole is not connected: the answer needs nothing from it.
        grid = fake_grid([10, 11], node_reply(lost=set()))
        assert deliver(grid, ledger, NODES, settings, federation, tmp_path, 1.0).sent == 0
        assert ledger.confirmations(request.request_id) == {}
        grid = fake_grid([10, 11, 12], node_reply(lost=set()))
        assert deliver(grid, ledger, NODES, settings, federation, tmp_path, 1.0).sent == 1
        assert ledger.confirmations(request.request_id)[2]["forget-accuracy"] == (
            pytest.approx(0.1))
