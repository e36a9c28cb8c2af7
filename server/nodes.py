"""Map node ids to partitions by asking the nodes (the server never sees partition-id)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from fedunlearn.errors import UserError
from strategies.replies import reply_node

LOG = logging.getLogger("fedunlearn")


class FederationError(UserError):
    """The connected nodes do not form the federation the config describes."""


@dataclass(frozen=True)
class Roster:
    """Who holds what: partition -> node id, and the training samples each node reported.

    ``sizes`` lacks a partition whose node did not report its size. ``seen`` holds
    the node ids that reported a partition, taken or not, and the ids replaced by
    a newer node: :func:`refresh` does not ask them again. ``own`` holds the
    partitions whose nodes train on their own files (node config ``data-dir``): the
    server cannot derive their sizes, so their reported sizes stand.
    """

    nodes: dict[int, int]
    sizes: dict[int, int]
    seen: frozenset[int] = frozenset()
    own: frozenset[int] = frozenset()


@dataclass(frozen=True)
class _Claim:
    """A node's answer to ``query.nodeinfo``: its partition and training-set size."""

    node: int
    partition: int
    size: int | None
    own: bool = False


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
    own: set[int] = set()
    asked: set[int] = set()
    while True:
        fresh = sorted(set(grid.get_node_ids()) - asked)
        if fresh:
            asked.update(fresh)
            claims, failures = _ask(grid, fresh, max(1.0, deadline - time.monotonic()), config)
            if failures:
                node, reason = next(iter(failures.items()))
                raise FederationError(f"node {node} did not report its partition: {reason}")
            for claim in claims:
                problem = _misfit(claim, num_clients, nodes)
                if problem:
                    raise FederationError(problem)
                nodes[claim.partition] = claim.node
                if claim.size is not None:
                    sizes[claim.partition] = claim.size
                if claim.own:
                    own.add(claim.partition)
        missing = sorted(set(range(num_clients)) - set(nodes))
        if not missing:
            return Roster(dict(sorted(nodes.items())), sizes, frozenset(nodes.values()),
                          frozenset(own))
        if time.monotonic() > deadline:
            raise FederationError(
                f"no node holds partition(s) {missing} after {timeout:.0f} s "
                f"({len(nodes)} of {num_clients} nodes reported; raise train.node_timeout "
                "or start the missing SuperNodes)")
        time.sleep(poll)


def announce(roster: Roster, seconds: float) -> None:
    """Log who took part after discovery: a few node ids and a count (a thousand ids are
    noise in a progress log), and how long discovery took."""
    shown = list(roster.nodes.values())
    more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
    LOG.info("federation: %d clients on nodes %s%s (%.1f s to discover)", len(shown),
             shown[:8], more, seconds)


def refresh(grid: Grid, roster: Roster, num_clients: int, timeout: float,
            config: ConfigRecord | None = None) -> Roster:
    """Take in the nodes that (re)joined since ``roster`` was made.

    A SuperNode restarted after a crash serves the same partition under a new node
    id. Only node ids the roster has never seen are asked (no message at all when
    none connected); a new node for a known partition replaces the old one. Claims
    that do not fit are ignored with a warning, never raised: the federation keeps
    running. ``sizes`` stay as discovery found them, so the limits derived from
    them (:func:`server.training.node_limits`) carry over to the new node id.

    Parameters
    ----------
    grid : Grid
        Flower's grid.
    roster : Roster
        The federation so far (from :func:`discover_partitions` or a previous call).
    num_clients : int
        The partitions the config describes.
    timeout : float
        Seconds to wait for the new nodes' answers; a new node that neither answers
        nor leaves costs this much on every call, until it does.
    config : ConfigRecord, optional
        Sent with the query, as in discovery.

    Returns
    -------
    Roster
        ``roster`` itself when no node was new, else a new roster: partitions moved
        to their new nodes, the nodes asked added to ``seen``.
    """
    connected = set(grid.get_node_ids())
    fresh = sorted(connected - roster.seen - set(roster.nodes.values()))
    if not fresh:
        return roster
    claims, failures = _ask(grid, fresh, timeout, config)
    for node, reason in failures.items():
        # Not marked seen: a node still starting up is asked again next time.
        LOG.warning("node %d did not report its partition: %s", node, reason)
    nodes = dict(roster.nodes)
    seen = set(roster.seen)
    moved: dict[int, int] = {}
    # In node order: which of two new claimants of one partition wins must not depend
    # on which answered first.
    for claim in sorted(claims, key=lambda c: c.node):
        seen.add(claim.node)
        pid = claim.partition
        # Discovery's checks (a partition the federation has, one node per partition in
        # a look), then the partition's size must be the one its node reported.
        problem = _misfit(claim, num_clients, moved)
        known = roster.sizes.get(pid)
        if problem is None and None not in (known, claim.size) and known != claim.size:
            problem = (f"node {claim.node} holds partition {pid} with {claim.size} training "
                       f"samples, node {nodes[pid]} reported {known}")
        if problem:
            LOG.warning("%s: node %d ignored", problem, claim.node)
            continue
        old = nodes.get(pid)
        nodes[pid] = moved[pid] = claim.node
        if old is None:
            LOG.info("partition %d: node %d joins", pid, claim.node)
            continue
        seen.add(old)
        still = " (still connected: check for a duplicate SuperNode)" if old in connected else ""
        LOG.log(logging.WARNING if still else logging.INFO,
                "partition %d: node %d replaces node %d%s", pid, claim.node, old, still)
    return Roster(dict(sorted(nodes.items())), dict(roster.sizes), frozenset(seen), roster.own)


def _ask(grid: Grid, fresh: list[int], timeout: float, config: ConfigRecord | None
         ) -> tuple[list[_Claim], dict[int, str]]:
    """Query ``fresh`` nodes for their node info.

    Returns the claims of the nodes that answered, in reply order, and per node
    that answered with an error or without a partition id, the reason. Nodes that
    did not answer within ``timeout`` are in neither.
    """
    content = RecordDict({P.CONFIG: config} if config is not None else {})
    messages = [Message(content, message_type=P.query(P.NODEINFO), dst_node_id=n) for n in fresh]
    claims: list[_Claim] = []
    failures: dict[int, str] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply_node(reply, messages)
        if reply.has_error():
            failures[node] = reply.error.reason
            continue
        info = reply.content.config_records.get(P.INFO)
        if info is None or P.PARTITION_ID not in info:
            failures[node] = f"no '{P.PARTITION_ID}' in its node info"
            continue
        size = int(info.get(P.NUM_TRAIN_EXAMPLES, -1))
        claims.append(_Claim(node, int(info[P.PARTITION_ID]), size if size >= 0 else None,
                             bool(int(info.get(P.OWN_DATA, 0)))))
    return claims, failures


def _misfit(claim: _Claim, num_clients: int, taken: dict[int, int]) -> str | None:
    """Why ``claim`` does not fit the federation, or None.

    ``taken`` maps the partitions already claimed in this look to their nodes.
    """
    pid = claim.partition
    if pid in taken:
        return f"nodes {taken[pid]} and {claim.node} both hold partition {pid}"
    if not 0 <= pid < num_clients:
        return f"node {claim.node} holds partition {pid}, beyond num_clients={num_clients}"
    return None
