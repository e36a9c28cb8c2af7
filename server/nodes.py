"""Map node ids to partitions by asking the nodes (the server never sees partition-id)."""

from __future__ import annotations

import time

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class FederationError(RuntimeError):
    """The connected nodes do not form the federation the config describes."""


def wait_for_nodes(grid: Grid, count: int, timeout: float, poll: float = 0.5) -> list[int]:
    """Block until at least ``count`` nodes are connected; return their sorted ids.

    Raises
    ------
    FederationError
        When fewer than ``count`` nodes connect within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} of {count} nodes connected within {timeout:.0f} s"
            )
        time.sleep(poll)
    return nodes


def discover_partitions(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Ask every node for its ``partition-id``; return ``{partition_id: node_id}``.

    Raises
    ------
    FederationError
        When a node fails to answer, two nodes claim one partition, or a partition
        of ``0..num_clients-1`` has no node.
    """
    nodes = wait_for_nodes(grid, num_clients, timeout)
    messages = [
        Message(RecordDict(), message_type="query.nodeinfo", dst_node_id=node) for node in nodes
    ]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise FederationError(f"node {node} did not report its partition: "
                                  f"{reply.error.reason}")
        pid = int(reply.content.config_records["info"]["partition-id"])
        if pid in mapping:
            raise FederationError(f"nodes {mapping[pid]} and {node} both hold partition {pid}")
        mapping[pid] = node
    missing = sorted(set(range(num_clients)) - set(mapping))
    if missing:
        raise FederationError(f"no node holds partition(s) {missing} of {num_clients}")
    extra = sorted(set(mapping) - set(range(num_clients)))
    if extra:
        raise FederationError(f"nodes hold partition(s) {extra} beyond num_clients={num_clients}")
    return dict(sorted(mapping.items()))
