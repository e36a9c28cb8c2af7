"""Node discovery: partition ids come from the nodes; bad federations fail clearly."""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.nodes import FederationError, discover_partitions


class ReplyingGrid:
    """A grid whose node ``n`` answers nodeinfo with ``claims[n]`` (built replies)."""

    def __init__(self, claims):
        self.claims = claims

    def get_node_ids(self):
        return list(self.claims)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            info = ConfigRecord({"partition-id": self.claims[msg.metadata.dst_node_id]})
            replies.append(Message(RecordDict({"info": info}), reply_to=msg))
        return replies


@pytest.fixture(autouse=True)
def identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def test_mapping_from_replies():
    assert discover_partitions(ReplyingGrid({70: 1, 50: 0, 60: 2}), 3, 5) == {0: 50, 1: 70, 2: 60}


@pytest.mark.parametrize(
    ("claims", "needle"),
    [({1: 0, 2: 0}, "both hold partition 0"), ({1: 0, 2: 5}, "no node holds partition(s) [1]")],
)
def test_bad_federation(claims, needle):
    with pytest.raises(FederationError, match=needle.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        discover_partitions(ReplyingGrid(claims), 2, 5)


def test_too_few_nodes_times_out():
    with pytest.raises(FederationError, match="only 1 of 3 nodes"):
        discover_partitions(ReplyingGrid({1: 0}), 3, timeout=0.2)
