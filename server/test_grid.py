"""CollectingGrid: replies collected by push and pull, at its interval, within the timeout."""

import time

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedunlearn import protocol as P
from server.grid import CollectingGrid


class SlowGrid:
    """A grid whose node n replies on the ``delays[n]``-th pull after the push (never
    when absent); replies carry a node timing record."""

    def __init__(self, delays: dict[int, int], pending: dict[int, object] | None = None) -> None:
        self.delays = delays
        self.pending_counts = pending or {}
        self.pulls = 0
        self.pending: dict[str, tuple[int, Message]] = {}

    def get_node_ids(self):
        return list(self.delays)

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{i}"
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            if self.delays[node] is not None:
                content = RecordDict({P.TIMING: ConfigRecord({
                    "process-start": 1.0, "handler-start": 2.0, "handler-end": 3.0})})
                if node in self.pending_counts:
                    content[P.PENDING] = ConfigRecord({"count": self.pending_counts[node]})
                reply = Message(content, reply_to=msg)
                self.pending[mid] = (self.delays[node], reply)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [mid for mid in message_ids
                 if mid in self.pending and self.pending[mid][0] <= self.pulls]
        return [self.pending.pop(mid)[1] for mid in ready]


def messages(nodes):
    return [Message(RecordDict(), message_type="train", dst_node_id=n) for n in nodes]


def test_collects_every_reply_as_it_comes_and_records_the_timeline():
    inner = SlowGrid({1: 1, 2: 3})
    grid = CollectingGrid(inner, interval=0.01)
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages([1, 2]), timeout=5))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert inner.pulls == 3  # stopped pulling once both had replied
    assert time.monotonic() - started < 1  # 0.01 s between pulls, not Flower's 3 s
    assert [e["node"] for e in grid.timeline] == [1, 2]
    for entry in grid.timeline:
        assert entry["type"] == "train" and entry["collected"] >= entry["pushed"]
        assert (entry["process-start"], entry["handler-end"]) == (1.0, 3.0)


def test_a_silent_node_costs_the_timeout_and_no_more():
    inner = SlowGrid({1: 1, 2: None})
    grid = CollectingGrid(inner, interval=0.02)
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages([1, 2]), timeout=0.3))
    elapsed = time.monotonic() - started
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.3 <= elapsed < 0.6
    assert len(grid.timeline) == 1  # only what replied


def test_everything_else_is_the_inner_grid_and_a_bad_interval_is_refused():
    inner = SlowGrid({4: 1, 5: 1})
    assert list(CollectingGrid(inner, 0.1).get_node_ids()) == [4, 5]
    with pytest.raises(ValueError, match="collect_interval must be > 0"):
        CollectingGrid(inner, 0)


def test_nodes_that_say_requests_wait_are_remembered_until_they_say_none():
    grid = CollectingGrid(SlowGrid({1: 1, 2: 1, 3: 1, 4: 1, 5: None},
                                   {1: 2, 2: 0, 3: -4, 4: "9"}), interval=0.01)
    list(grid.send_and_receive(messages([1, 2, 3, 4, 5]), timeout=0.2))
    assert grid.pending == {1}  # zero, negative, text and silence are not "pending"
    grid.inner.pending_counts = {}
    list(grid.send_and_receive(messages([2]), timeout=1))
    assert grid.pending == {1}  # a node not heard from keeps its last word
    list(grid.send_and_receive(messages([1]), timeout=1))
    assert grid.pending == set()
