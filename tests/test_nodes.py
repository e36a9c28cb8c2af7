"""Node discovery: partition ids come from the nodes; bad federations fail clearly."""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.nodes import FederationError, discover_partitions


class ReplyingGrid:
    """A grid whose node ``n`` answers nodeinfo with ``claims[n]`` (built replies)."""

    def __init__(self, claims):
        self.claims = claims
        self.sizes = {}
        self.late = set()
        self.asked = []

    def get_node_ids(self):
        nodes = [n for n in self.claims if n not in self.late]
        self.late = set()
        return nodes

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.asked.append(node)
            info = ConfigRecord({"partition-id": self.claims[node]})
            if node in self.sizes:
                info["num-train-examples"] = self.sizes[node]
            replies.append(Message(RecordDict({"info": info}), reply_to=msg))
        return replies


@pytest.fixture(autouse=True)
def identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def test_mapping_from_replies():
    roster = discover_partitions(ReplyingGrid({70: 1, 50: 0, 60: 2}), 3, 5)
    assert roster.nodes == {0: 50, 1: 70, 2: 60}
    assert roster.sizes == {}  # these nodes did not report their sizes


def test_sizes_are_reported():
    grid = ReplyingGrid({70: 1, 50: 0})
    grid.sizes = {70: 12, 50: 30}
    assert discover_partitions(grid, 2, 5).sizes == {0: 30, 1: 12}


def test_nodes_that_connect_late_are_asked_once():
    grid = ReplyingGrid({1: 0, 2: 1})
    grid.late = {2}  # node 2 connects only after the first look
    roster = discover_partitions(grid, 2, 5, poll=0.01)
    assert roster.nodes == {0: 1, 1: 2}
    assert grid.asked == [1, 2]


@pytest.mark.parametrize(
    ("claims", "needle"),
    [({1: 0, 2: 0}, "both hold partition 0"), ({1: 0, 2: 5}, "node 2 holds partition 5")],
)
def test_bad_federation(claims, needle):
    with pytest.raises(FederationError, match=needle.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        discover_partitions(ReplyingGrid(claims), 2, 5)


def test_too_few_nodes_times_out_naming_the_missing_partitions():
    with pytest.raises(FederationError, match=r"no node holds partition\(s\) \[1, 2\] after 0 s"):
        discover_partitions(ReplyingGrid({1: 0}), 3, timeout=0.2)
