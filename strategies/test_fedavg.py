"""FederatedAveraging on built replies: weighting, cost sums, refusals, node choice."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies.fedavg import FederatedAveraging, aggregate_metrics


class FakeGrid:
    """Only what configure_train reads from a Grid: the connected node ids."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


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
