"""Curvature replies folded into the TIS aggregate: usable ones in, malformed ones out."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedunlearn.unlearning.tis import CurvatureAccumulator, CurvatureReplyError
from server.curvature import CurvatureError, fold_reply, query_curvature


def model():
    return torch.nn.Sequential(torch.nn.Linear(3, 2))


def diag(value):
    return {"0.weight": torch.full((2, 3), value), "0.bias": torch.full((2,), value)}


def reply(msg, forget, n_forget, retain, n_retain, **extra):
    content = RecordDict({"metrics": MetricRecord({"n-forget": n_forget, "n-retain": n_retain,
                                                   **extra})})
    if forget is not None:
        content["h-forget"] = ArrayRecord(forget)
    if retain is not None:
        content["h-retain"] = ArrayRecord(retain)
    return Message(content, reply_to=msg)


def query(node):
    return Message(RecordDict(), message_type="query.curvature", dst_node_id=node)


BAD = {
    "nan": lambda m: reply(m, diag(float("nan")), 2, diag(1.0), 3),
    "shape": lambda m: reply(m, {"0.weight": torch.ones(3, 2), "0.bias": torch.ones(2)}, 2,
                             diag(1.0), 3),
    "negative count": lambda m: reply(m, diag(1.0), -2, diag(1.0), 3),
    "negative entry": lambda m: reply(m, diag(-1.0), 2, diag(1.0), 3),
    "missing key": lambda m: reply(m, {"0.weight": torch.ones(2, 3)}, 2, diag(1.0), 3),
    "no counts": lambda m: Message(RecordDict({"h-forget": ArrayRecord(diag(1.0))}),
                                   reply_to=m),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_malformed_reply_refused_and_nothing_added(kind):
    acc = CurvatureAccumulator.for_model(model(), nonnegative=True)
    fold_reply(acc, reply(query(1), diag(2.0), 2, diag(4.0), 6))
    before = acc.result()
    with pytest.raises(CurvatureReplyError):
        fold_reply(acc, BAD[kind](query(2)))
    after = acc.result()
    assert acc.num_replies == 1
    for b, a in zip(before, after, strict=True):
        assert all(torch.equal(b[k], a[k]) for k in b)


class ReplyGrid:
    def __init__(self, makers):
        self.makers = makers

    def send_and_receive(self, messages, timeout=None):
        return [self.makers[m.metadata.dst_node_id](m) for m in messages]


def run(makers, min_replies):
    return query_curvature(ReplyGrid(makers), list(makers), ArrayRecord(diag(0.0)),
                           ConfigRecord(), model(), "diag_ggn_exact",
                           min_replies=min_replies, timeout=5)


def test_aggregate_of_usable_replies_eq30():
    result = run({1: lambda m: reply(m, diag(2.0), 2, diag(4.0), 6, flops=10),
                  2: lambda m: reply(m, None, 0, diag(1.0), 2, flops=5),
                  3: BAD["nan"]}, min_replies=2)
    # h = (2*2 + 6*4 + 2*1) / 10 = 3.0 ; h' = 2*2 / 2 = 2.0
    assert torch.allclose(result.h["0.weight"], torch.full((2, 3), 3.0))
    assert torch.allclose(result.h_prime["0.bias"], torch.full((2,), 2.0))
    assert result.replies == 2 and [n for n, _ in result.refused] == [3]
    assert result.flops == 15 and result.bytes > 0


def test_too_few_replies_fail_the_request():
    with pytest.raises(CurvatureError, match="only 1 of 2 curvature replies usable"):
        run({1: lambda m: reply(m, diag(2.0), 2, diag(4.0), 6),
             2: BAD["negative entry"]}, min_replies=2)
    with pytest.raises(CurvatureError, match="N_T = 0"):
        run({1: lambda m: reply(m, None, 0, diag(4.0), 6),
             2: lambda m: reply(m, None, 0, diag(4.0), 6)}, min_replies=2)


def test_replies_are_folded_as_they_come_not_held_together():
    """Through the server's CollectingGrid, 60 replies never sit in memory at once."""
    import weakref

    from server.grid import CollectingGrid

    alive: set[int] = set()
    most = [0]

    class TrickleGrid:  # one node's reply ready per pull, made when pulled
        def push_messages(self, messages):
            self.queue = []
            for i, msg in enumerate(messages):
                msg.metadata.__dict__["_message_id"] = f"m{i}"
                self.queue.append(msg)
            return [m.metadata.message_id for m in self.queue]

        def pull_messages(self, ids):
            most[0] = max(most[0], len(alive))
            if not self.queue:
                return []
            made = reply(self.queue.pop(0), diag(2.0), 2, diag(4.0), 6)
            alive.add(id(made))
            weakref.finalize(made, alive.discard, id(made))
            return [made]

    grid = CollectingGrid(TrickleGrid(), interval=0.001)
    result = query_curvature(grid, list(range(60)), ArrayRecord(diag(0.0)), ConfigRecord(),
                             model(), "diag_ggn_exact", min_replies=60, timeout=30)
    assert result.replies == 60
    assert torch.allclose(result.h["0.weight"], torch.full((2, 3), 3.5))
    assert most[0] <= 1  # with send_and_receive's list, all 60 would be alive at the end
