"""Node discovery: partition ids come from the nodes; bad federations fail clearly."""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedunlearn import protocol as P
from server.nodes import FederationError, discover_partitions, refresh


def claiming(fake_grid, claims, sizes=None, own=()):
    """A grid whose node ``n`` answers nodeinfo with partition ``claims[n]`` (and, for
    the nodes in ``own``, that it trains on its own files)."""
    def answer(msg):
        node = msg.metadata.dst_node_id
        info = ConfigRecord({P.PARTITION_ID: claims[node]})
        if sizes and node in sizes:
            info[P.NUM_TRAIN_EXAMPLES] = sizes[node]
        if node in own:
            info[P.OWN_DATA] = 1
        return Message(RecordDict({P.INFO: info}), reply_to=msg)
    return fake_grid(claims, answer)


def test_mapping_from_replies(fake_grid):
    roster = discover_partitions(claiming(fake_grid, {70: 1, 50: 0, 60: 2}), 3, 5)
    assert roster.nodes == {0: 50, 1: 70, 2: 60}
    assert roster.sizes == {}  # these nodes did not report their sizes


def test_sizes_are_reported(fake_grid):
    grid = claiming(fake_grid, {70: 1, 50: 0}, sizes={70: 12, 50: 30})
    assert discover_partitions(grid, 2, 5).sizes == {0: 30, 1: 12}


def test_a_node_on_its_own_files_is_held_to_the_size_it_reported(fake_grid):
    import numpy as np

    from fedunlearn.federation import Federation
    from server.training import node_limits

    # Node 70 trains on 500 samples of its own; its demo partition would have 12.
    grid = claiming(fake_grid, {70: 1, 50: 0}, sizes={70: 500, 50: 300}, own={70})
    roster = discover_partitions(grid, 2, 5)
    assert roster.own == {1}
    train_ids = [np.arange(30), np.arange(12)]
    data = Federation(splits=None, partitions=train_ids, train_ids=train_ids, val_ids=[],
                      poisoned={})
    # Its reported size stands (the config knows nothing of its files); a partition
    # node still gets the smaller of reported and configured.
    assert node_limits(roster, data) == {70: 500, 50: 30}


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


# ---- refresh: nodes that rejoin under a new id ---------------------------------------
def federation(fake_grid, claims, sizes=None):
    """A discovered federation of ``claims`` whose grid then forgets what it sent."""
    grid = claiming(fake_grid, claims, sizes)
    roster = discover_partitions(grid, len(claims), 5)
    grid.sent.clear()
    return grid, roster


def test_refresh_sends_nothing_while_the_nodes_are_the_same(fake_grid):
    grid, roster = federation(fake_grid, {50: 0, 60: 1, 70: 2})
    assert refresh(grid, roster, 3, 5) is roster
    grid.nodes = [50, 70]  # a node vanished: nothing to ask either
    assert refresh(grid, roster, 3, 5) is roster
    assert grid.sent == []


def test_a_restarted_node_takes_its_partition_and_its_limit(fake_grid, caplog):
    import numpy as np

    from fedunlearn.federation import Federation
    from server.training import node_limits

    grid, roster = federation(fake_grid, {50: 0, 60: 1, 70: 2}, sizes={50: 30, 60: 12, 70: 9})
    # Node 60 crashed; its SuperNode restarted as node 99 with the same partition.
    grid.nodes = [50, 70, 99]
    claims = {50: 0, 70: 2, 99: 1}
    grid.answer = claiming(fake_grid, claims, sizes={99: 12}).answer
    with caplog.at_level("INFO", logger="fedunlearn"):
        new = refresh(grid, roster, 3, 5)
    assert [m.metadata.dst_node_id for m in grid.sent] == [99]  # only the new id is asked
    assert new.nodes == {0: 50, 1: 99, 2: 70} and new.sizes == roster.sizes
    assert "partition 1: node 99 replaces node 60" in caplog.text
    # The limit follows the partition: the new node may claim what the old one could.
    # The config gives partition 1 more samples than its node reported: the smaller holds.
    train_ids = [np.arange(30), np.arange(20), np.arange(9)]
    data = Federation(splits=None, partitions=train_ids, train_ids=train_ids, val_ids=[],
                      poisoned={})
    assert node_limits(new, data)[99] == node_limits(roster, data)[60] == 12
    # Asked once: the next round costs nothing, even if the old id shows up again.
    grid.nodes.append(60)
    assert refresh(grid, new, 3, 5) is new and len(grid.sent) == 1


@pytest.mark.parametrize(("claim", "size", "needle"), [
    (7, None, "node 99 holds partition 7, beyond num_clients=3"),
    (1, 500, "node 99 holds partition 1 with 500 training samples, node 60 reported 12"),
])
def test_a_claim_that_does_not_fit_is_ignored_once(fake_grid, caplog, claim, size, needle):
    grid, roster = federation(fake_grid, {50: 0, 60: 1, 70: 2}, sizes={50: 30, 60: 12, 70: 9})
    grid.nodes.append(99)
    grid.answer = claiming(fake_grid, {99: claim}, sizes={99: size} if size else None).answer
    new = refresh(grid, roster, 3, 5)
    assert new.nodes == roster.nodes
    assert f"{needle}: node 99 ignored" in caplog.text
    assert refresh(grid, new, 3, 5) is new and len(grid.sent) == 1  # not asked again


def test_two_claimants_of_one_partition_the_lower_id_wins(fake_grid, caplog):
    grid, roster = federation(fake_grid, {50: 0, 60: 1})
    grid.nodes = [50, 98, 97]
    grid.answer = claiming(fake_grid, {98: 1, 97: 1}).answer
    new = refresh(grid, roster, 2, 5)
    assert new.nodes == {0: 50, 1: 97}
    assert "nodes 97 and 98 both hold partition 1: node 98 ignored" in caplog.text


def test_a_new_node_that_does_not_answer_is_asked_again(fake_grid, caplog):
    grid, roster = federation(fake_grid, {50: 0, 60: 1})
    grid.nodes = [50, 99]
    grid.answer = lambda msg: None  # connected, but silent (still starting)
    assert refresh(grid, roster, 2, 5).nodes == roster.nodes
    grid.answer = lambda msg: Message(RecordDict({P.INFO: ConfigRecord({})}), reply_to=msg)
    assert refresh(grid, roster, 2, 5).nodes == roster.nodes
    assert "node 99 did not report its partition: no 'partition-id'" in caplog.text
    grid.answer = claiming(fake_grid, {99: 1}).answer
    assert refresh(grid, roster, 2, 5).nodes == {0: 50, 1: 99}
    assert [m.metadata.dst_node_id for m in grid.sent] == [99, 99, 99]


def test_a_new_node_while_the_old_one_is_still_connected_is_warned_about(fake_grid, caplog):
    grid, roster = federation(fake_grid, {50: 0, 60: 1})
    grid.nodes = [50, 60, 99]
    grid.answer = claiming(fake_grid, {99: 1}).answer
    assert refresh(grid, roster, 2, 5).nodes == {0: 50, 1: 99}
    assert "node 99 replaces node 60 (still connected" in caplog.text
