"""Map node ids to partitions by asking the nodes (the server never sees partition-id)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from fedunlearn.errors import UserError
from strategies.replies import reply_node


class FederationError(UserError):
    """The connected nodes do not form the federation the config describes."""


@dataclass(frozen=True)
class Roster:
    """Who holds what: partition -> node id, and the training samples each node reported.

    ``sizes`` lacks a partition whose node did not report its size.
    """

    nodes: dict[int, int]
    sizes: dict[int, int]


def discover_partitions(
    grid: Grid, num_clients: int, timeout: float, config: ConfigRecord | None = None,
    poll: float = 0.5,
) -> Roster:
    """Ask nodes for their ``partition-id`` (and training-set size) as they connect.

    Waits until every partition ``0..num_clients-1`` has a node, asking each node
    once as it appears, for at most ``timeout`` seconds.

    Parameters
    ----------
    grid : Grid
        Flower's grid.
    num_clients : int
        The partitions the config describes.
    timeout : float
        Seconds to wait for the whole federation (``train.node_timeout``).
    config : ConfigRecord, optional
        Sent with the query (the composed config, from which a node finds its data).
    poll : float
        Seconds between looks at the connected nodes.

    Raises
    ------
    FederationError
        A node fails to answer, two nodes claim one partition, a node claims a
        partition beyond ``num_clients``, or partitions still lack a node at the
        deadline (the message names them).
    """
    deadline = time.monotonic() + timeout
    nodes: dict[int, int] = {}
    sizes: dict[int, int] = {}
    asked: set[int] = set()
    while True:
        fresh = sorted(set(grid.get_node_ids()) - asked)
        if fresh:
            asked.update(fresh)
            _ask(grid, fresh, num_clients, max(1.0, deadline - time.monotonic()), config,
                 nodes, sizes)
        missing = sorted(set(range(num_clients)) - set(nodes))
        if not missing:
            return Roster(dict(sorted(nodes.items())), sizes)
        if time.monotonic() > deadline:
            raise FederationError(
                f"no node holds partition(s) {missing} after {timeout:.0f} s "
                f"({len(nodes)} of {num_clients} nodes reported; raise train.node_timeout "
                "or start the missing SuperNodes)")
        time.sleep(poll)


def _ask(grid: Grid, fresh: list[int], num_clients: int, timeout: float,
         config: ConfigRecord | None, nodes: dict[int, int], sizes: dict[int, int]) -> None:
    """Query ``fresh`` nodes for their node info; fill ``nodes`` and ``sizes``."""
    content = RecordDict({P.CONFIG: config} if config is not None else {})
    messages = [Message(content, message_type=P.query(P.NODEINFO), dst_node_id=n) for n in fresh]
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply_node(reply, messages)
        if reply.has_error():
            raise FederationError(f"node {node} did not report its partition: "
                                  f"{reply.error.reason}")
        info = reply.content.config_records[P.INFO]
        pid = int(info[P.PARTITION_ID])
        if pid in nodes:
            raise FederationError(f"nodes {nodes[pid]} and {node} both hold partition {pid}")
        if not 0 <= pid < num_clients:
            raise FederationError(f"node {node} holds partition {pid}, beyond "
                                  f"num_clients={num_clients}")
        nodes[pid] = node
        if int(info.get(P.NUM_TRAIN_EXAMPLES, -1)) >= 0:
            sizes[pid] = int(info[P.NUM_TRAIN_EXAMPLES])
