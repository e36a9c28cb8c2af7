"""Node discovery: partition ids come from the nodes; bad federations fail clearly."""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedunlearn import protocol as P
from server.nodes import FederationError, discover_partitions


def claiming(fake_grid, claims, sizes=None):
    """A grid whose node ``n`` answers nodeinfo with partition ``claims[n]``."""
    def answer(msg):
        node = msg.metadata.dst_node_id
        info = ConfigRecord({P.PARTITION_ID: claims[node]})
        if sizes and node in sizes:
            info[P.NUM_TRAIN_EXAMPLES] = sizes[node]
        return Message(RecordDict({P.INFO: info}), reply_to=msg)
    return fake_grid(claims, answer)


def test_mapping_from_replies(fake_grid):
    roster = discover_partitions(claiming(fake_grid, {70: 1, 50: 0, 60: 2}), 3, 5)
    assert roster.nodes == {0: 50, 1: 70, 2: 60}
    assert roster.sizes == {}  # these nodes did not report their sizes


def test_sizes_are_reported(fake_grid):
    grid = claiming(fake_grid, {70: 1, 50: 0}, sizes={70: 12, 50: 30})
    assert discover_partitions(grid, 2, 5).sizes == {0: 30, 1: 12}


def test_nodes_that_connect_late_are_asked_once(fake_grid):
    grid = claiming(fake_grid, {1: 0, 2: 1})
    grid.nodes = [1]  # node 2 connects only after the first look
    first = grid.answer

    def answer(msg):
        grid.nodes = [1, 2]
        return first(msg)

    grid.answer = answer
    roster = discover_partitions(grid, 2, 5, poll=0.01)
    assert roster.nodes == {0: 1, 1: 2}
    assert [m.metadata.dst_node_id for m in grid.sent] == [1, 2]


@pytest.mark.parametrize(
    ("claims", "needle"),
    [({1: 0, 2: 0}, "both hold partition 0"), ({1: 0, 2: 5}, "node 2 holds partition 5")],
)
def test_bad_federation(fake_grid, claims, needle):
    with pytest.raises(FederationError, match=needle):
        discover_partitions(claiming(fake_grid, claims), 2, 5)


def test_too_few_nodes_times_out_naming_the_missing_partitions(fake_grid):
    with pytest.raises(FederationError, match=r"no node holds partition\(s\) \[1, 2\] after 0 s"):
        discover_partitions(claiming(fake_grid, {1: 0}), 3, timeout=0.2)
