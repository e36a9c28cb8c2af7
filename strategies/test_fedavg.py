"""FederatedAveraging on built replies: weighting, cost sums, refusals, node choice, churn."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies.fedavg import FederatedAveraging, aggregate_metrics
from strategies.rounds import RoundError, TooFewReplies
from tests.fakes import FakeGrid


def record(**named):
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in named.items()})


def global_arrays():
    return record(w=np.zeros((2, 3)), b=np.zeros(3))


def reply_to(msg, w, b, n, **metrics):
    metric = MetricRecord({"num-examples": n, "loss": 1.0, "flops": 10, **metrics})
    return Message(RecordDict({"arrays": record(w=w, b=b), "metrics": metric}), reply_to=msg)


def configured(strategy, nodes=(11, 12, 13)):
    return list(strategy.configure_train(1, global_arrays(), ConfigRecord(), FakeGrid(nodes)))


def test_weighted_average_and_summed_costs():
    strategy = FederatedAveraging()
    m1, m2, _ = configured(strategy)
    replies = [
        reply_to(m1, np.ones((2, 3)), np.ones(3), 10, loss=1.0),
        reply_to(m2, 4 * np.ones((2, 3)), np.zeros(3), 30, loss=3.0),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # (10 * 1 + 30 * 4) / 40 = 3.25 ; (10 * 1 + 30 * 0) / 40 = 0.25
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), 3.25))
    np.testing.assert_allclose(arrays["b"].numpy(), np.full(3, 0.25))
    assert metrics["num-examples"] == 40
    assert metrics["flops"] == 20  # costs add up
    assert metrics["loss"] == pytest.approx((10 * 1.0 + 30 * 3.0) / 40)


@pytest.mark.parametrize(
    ("w", "b", "n", "why"),
    [
        (np.full((2, 3), np.nan), np.ones(3), 5, "NaN"),
        (np.ones((3, 2)), np.ones(3), 5, "expected"),
        (np.ones((2, 3)), np.ones(3), -4, "positive"),
        (np.ones((2, 3)), np.ones(3), 0, "positive"),
    ],
)
def test_malformed_reply_is_refused_and_the_rest_aggregated(w, b, n, why):
    strategy = FederatedAveraging()
    good, bad, _ = configured(strategy)
    replies = [reply_to(good, 2 * np.ones((2, 3)), np.ones(3), 8), reply_to(bad, w, b, n)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)
    assert metrics["num-examples"] == 8
    assert len(strategy.refused) == 1
    assert strategy.refused[0][1] == 12 and why in strategy.refused[0][2]


def test_missing_metric_and_unknown_array_refused():
    strategy = FederatedAveraging()
    m1, m2, _ = configured(strategy)
    no_count = Message(
        RecordDict({"arrays": global_arrays(), "metrics": MetricRecord({"loss": 1.0})}),
        reply_to=m1,
    )
    extra = record(w=np.zeros((2, 3)), b=np.zeros(3), x=np.ones(1))
    odd = Message(RecordDict({"arrays": extra, "metrics": MetricRecord({"num-examples": 3})}),
                  reply_to=m2)
    arrays, _ = strategy.aggregate_train(1, [no_count, odd])
    assert arrays is None
    reasons = [r for _, _, r in strategy.refused]
    assert "lacks 'num-examples'" in reasons[0] and "unexpected ['x']" in reasons[1]


def test_participants_and_seeded_sampling():
    strategy = FederatedAveraging(participants=[12, 13])
    assert [m.metadata.dst_node_id for m in configured(strategy)] == [12, 13]
    picks = []
    for _ in range(2):
        s = FederatedAveraging(fraction_train=0.5, seed=7)
        picks.append([[m.metadata.dst_node_id for m in configured(s, range(10))]
                      for _ in range(3)])
    assert picks[0] == picks[1]  # same seed, same sample
    assert all(len(p) == 5 for p in picks[0])
    assert len({tuple(p) for p in picks[0]}) > 1  # rounds differ


def test_aggregate_metrics_sums_costs_only():
    records = [RecordDict({"m": MetricRecord({"num-examples": 1, "accuracy": 1.0,
                                                "bytes-sent": 5})}),
               RecordDict({"m": MetricRecord({"num-examples": 3, "accuracy": 0.0,
                                                "bytes-sent": 7})})]
    out = aggregate_metrics(records, "num-examples")
    assert out["bytes-sent"] == 12 and out["accuracy"] == pytest.approx(0.25)


def test_a_reply_claiming_more_examples_than_its_node_holds_is_refused():
    # The reported attack: right shapes, all weights 0.5, num-examples 10^12.
    strategy = FederatedAveraging(limits={11: 40, 12: 40, 13: 40})
    m1, m2, m3 = configured(strategy)
    replies = [reply_to(m1, np.ones((2, 3)), np.ones(3), 40),
               reply_to(m2, np.ones((2, 3)), np.ones(3), 30),
               reply_to(m3, np.full((2, 3), 0.5), np.full(3, 0.5), 10**12)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0)
    assert metrics["num-examples"] == 70
    ((_, node, reason),) = strategy.refused
    assert node == 13 and "more than the 40 training samples the node holds" in reason


def test_a_lost_node_is_named_not_the_superlink():
    from flwr.app import Error
    from flwr.app.message import make_message
    from flwr.common.constant import SUPERLINK_NODE_ID

    strategy = FederatedAveraging()
    m1, m2, _ = configured(strategy)
    for i, msg in enumerate((m1, m2)):  # what the grid does when it pushes
        msg.metadata.__dict__["_message_id"] = f"id-{i}"
    lost = make_message(metadata=m2.metadata.__class__(
        run_id=1, message_id="", src_node_id=SUPERLINK_NODE_ID, dst_node_id=SUPERLINK_NODE_ID,
        reply_to_message_id="id-1", group_id="", message_type="train", created_at=0.0,
        ttl=1.0), error=Error(code=3, reason="node unavailable"))
    strategy.aggregate_train(1, [reply_to(m1, np.ones((2, 3)), np.ones(3), 8), lost])
    ((_, node, reason),) = strategy.refused
    assert node == 12 and "node unavailable" in reason


@pytest.mark.parametrize(("name", "expected"), [
    ("fedavg", (9 * 1.0 + 1 * 100.0) / 10),  # one rogue of ten drags the mean
    ("median", 1.0),
    ("trimmed_mean", 1.0),
    ("krum", 1.0),
])
def test_robust_aggregation_bounds_one_rogue_of_ten(name, expected):
    from strategies.robust import make_aggregator

    strategy = FederatedAveraging(aggregator=make_aggregator(name, beta=0.2,
                                                             num_malicious_nodes=1))
    messages = configured(strategy, nodes=range(10))
    replies = [reply_to(m, np.ones((2, 3)), np.ones(3), 10) for m in messages[:9]]
    replies.append(reply_to(messages[9], np.full((2, 3), 100.0), np.full(3, 100.0), 10))
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=1e-6)
    # Costs are summed over every usable reply, whichever replies the rule keeps.
    assert metrics["num-examples"] == 100 and metrics["flops"] == 100


def test_unknown_aggregation_is_one_line():
    from strategies.robust import make_aggregator

    with pytest.raises(ValueError, match="unknown aggregation 'mean'; known: fedavg"):
        make_aggregator("mean")
    with pytest.raises(ValueError, match="aggregation 'trimmed_mean': .*beta"):
        make_aggregator("trimmed_mean", beta=0.7)


def test_sampling_and_summing_follow_ranks_not_node_ids():
    # Node ids are drawn anew each run; partitions are not. Same partitions, other ids:
    # the same sample of partitions, and replies summed in the same order.
    picks = []
    for ids in ((11, 12, 13, 14), (94, 3, 57, 20)):
        strategy = FederatedAveraging(fraction_train=0.5, seed=7,
                                      ranks={node: pid for pid, node in enumerate(ids)})
        sent = configured(strategy, ids)
        picks.append(sorted(ids.index(m.metadata.dst_node_id) for m in sent))
        replies = [reply_to(m, np.full((2, 3), 0.1 * (i + 1)), np.ones(3), 10)
                   for i, m in enumerate(sent)]
        strategy.aggregate_train(1, list(reversed(replies)))
    assert picks[0] == picks[1]


# ---- churn: nodes that vanish mid-round, retries, too few replies --------------------
class TimedGrid(FakeGrid):
    """A FakeGrid that also records the timeout of every send_and_receive."""

    def __init__(self, nodes, answer) -> None:
        super().__init__(nodes, answer)
        self.timeouts: list[float | None] = []

    def send_and_receive(self, messages, timeout=None):
        self.timeouts.append(timeout)
        return super().send_and_receive(messages, timeout)


def answering(value_of, silent=lambda msg, calls: False):
    """Node ``n`` answers w = value_of[n] with 10 examples, unless ``silent(msg, calls)``
    (``calls`` counts the messages node ``n`` got so far, this one included)."""
    calls: dict[int, int] = {}

    def answer(msg):
        node = msg.metadata.dst_node_id
        calls[node] = calls.get(node, 0) + 1
        if silent(msg, calls[node]):
            return None
        w = value_of[node]
        return reply_to(msg, np.full((2, 3), w), np.full(3, w), 10)
    return answer


def run(grid, strategy=None, **kwargs):
    """One round of ``strategy`` on ``grid``; its records, the model after it."""
    strategy = strategy or FederatedAveraging()
    records = []
    arrays = strategy.run_rounds(grid, global_arrays(), rounds=1, config=ConfigRecord(),
                                 evaluate_fn=None, timeout=5.0, phase="serve",
                                 on_round=records.append, **kwargs)
    return records, arrays


@pytest.mark.parametrize("min_replies", [1, 2])
def test_a_node_that_vanishes_mid_round_leaves_the_others_aggregated(min_replies, caplog):
    grid = TimedGrid((11, 12, 13), answering({11: 1.0, 12: 3.0, 13: 100.0},
                                              silent=lambda msg, _: msg.metadata.dst_node_id == 13))
    (record,), arrays = run(grid, min_replies=min_replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)  # nodes 11 and 12 only
    assert (record.nodes, record.missing, record.tries, record.refused) == (3, 1, 1, 0)
    assert record.client_metrics["num-examples"] == 20
    assert grid.timeouts == [5.0]
    assert "serve round 1: no reply from node(s) [13] within 5 s" in caplog.text


def test_too_few_replies_are_retried_then_raise_one_line():
    grid = TimedGrid((11, 12, 13), answering({11: 1.0, 12: 3.0, 13: 100.0},
                                              silent=lambda msg, _: msg.metadata.dst_node_id == 13))
    with pytest.raises(TooFewReplies) as err:
        run(grid, min_replies=3, retries=2)
    assert str(err.value) == ("serve round 1: 2 usable replies from 3 node(s), 3 needed after "
                              "3 tries: no reply from node(s) [13] within 5 s")
    assert isinstance(err.value, RoundError)  # what callers of run_rounds already catch
    assert len(grid.sent) == 9 and grid.timeouts == [5.0] * 3  # each try waits its timeout


def test_a_retry_that_gets_every_reply_is_aggregated():
    # Node 13 misses the first try only (a restart, a slow link).
    grid = TimedGrid((11, 12, 13), answering({11: 1.0, 12: 2.0, 13: 6.0},
                                              silent=lambda msg, n: msg.metadata.dst_node_id == 13
                                              and n == 1))
    (record,), arrays = run(grid, min_replies=3, retries=1)
    np.testing.assert_allclose(arrays["w"].numpy(), 3.0)
    assert (record.nodes, record.missing, record.tries) == (3, 1, 2)
    # The retry sends new messages: same round, new ids.
    assert len({m.metadata.message_id for m in grid.sent}) == 6
    assert {m.content.config_records["config"]["server-round"] for m in grid.sent} == {1}


def test_refused_replies_do_not_count_towards_the_minimum():
    def answer(msg):
        w = np.nan if msg.metadata.dst_node_id == 13 else 1.0
        return reply_to(msg, np.full((2, 3), w), np.ones(3), 10)

    strategy = FederatedAveraging()
    with pytest.raises(TooFewReplies, match=r"2 usable replies from 3 node\(s\), 3 needed: "
                                          r"node 13: array 'w' holds NaN"):
        run(FakeGrid((11, 12, 13), answer), strategy, min_replies=3)
    assert [node for _, node, _ in strategy.refused] == [13]


def test_fewer_nodes_than_needed_fails_before_sending():
    grid = FakeGrid((11, 12), answering({11: 1.0, 12: 1.0}))
    with pytest.raises(TooFewReplies, match=r"^serve round 1: 2 node\(s\) to train, 3 needed$"):
        run(grid, min_replies=3, retries=5)
    assert grid.sent == []


def test_a_retry_samples_anew_under_the_seed():
    # Half of four nodes train each round; node 0 is gone. A try that sampled it
    # falls short; the retry's sample is a fresh, seeded one.
    def tries():
        grid = FakeGrid(range(4), answering(dict.fromkeys(range(4), 1.0),
                                            silent=lambda msg, _: msg.metadata.dst_node_id == 0))
        strategy = FederatedAveraging(fraction_train=0.5, seed=6)
        (record,), _ = run(grid, strategy, min_replies=2, retries=5)
        sent = [m.metadata.dst_node_id for m in grid.sent]
        return record, [sent[i:i + 2] for i in range(0, len(sent), 2)]

    record, samples = tries()
    assert record.tries == len(samples) == 4  # seed 6 samples node 0 three times running
    assert all(0 in s for s in samples[:-1]) and 0 not in samples[-1]
    assert len({tuple(s) for s in samples}) == 4
    assert tries()[1] == samples  # the same seed retries the same way


def test_bad_retry_settings_are_refused():
    with pytest.raises(ValueError, match="min_replies must be at least 1"):
        run(FakeGrid(), min_replies=0)


def test_a_rule_that_wants_more_replies_than_the_round_is_named():
    from strategies.robust import make_aggregator

    # Bulyan skips aggregating fewer than 4f + 3 replies: 3 usable are enough for
    # the round (min_replies=1) but not for the rule.
    strategy = FederatedAveraging(aggregator=make_aggregator("bulyan", num_malicious_nodes=1))
    with pytest.raises(TooFewReplies, match=r"3 usable replies from 3 node\(s\), too few for "
                                            r"the aggregation rule$"):
        run(FakeGrid((11, 12, 13), answering({11: 1.0, 12: 2.0, 13: 3.0})), strategy)


def test_a_restarted_federation_samples_and_numbers_rounds_as_if_it_never_stopped():
    nodes = tuple(range(11, 21))
    values = dict.fromkeys(nodes, 1.0)

    def rounds_of(strategy, first, count):
        grid = FakeGrid(nodes, answering(values))
        chosen = []
        for rnd in range(first, first + count):
            run(grid, strategy, first=rnd)
        for msg in grid.sent:
            chosen.append((int(msg.content.config_records["config"]["server-round"]),
                           msg.metadata.dst_node_id))
        return chosen

    whole = rounds_of(FederatedAveraging(fraction_train=0.3, seed=4), 1, 4)
    before = FederatedAveraging(fraction_train=0.3, seed=4)
    head = rounds_of(before, 1, 2)
    after = FederatedAveraging(fraction_train=0.3, seed=4)  # a new process
    after.restore_sampling(before.sampling_state())
    assert head + rounds_of(after, 3, 2) == whole
    assert [r for r, _ in whole] == [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3
    # Without the saved state the restarted process would repeat round 1's sample.
    assert rounds_of(FederatedAveraging(fraction_train=0.3, seed=4), 3, 2) != whole[6:]
