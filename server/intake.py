"""Taking forget requests in: the scenario's, and those the nodes hand over when polled.

A node's reply is untrusted input. Every submission ends in exactly one of two
places, whatever it holds: recorded as a request in the ledger, or kept as a
rejection with its reason (:meth:`fedunlearn.ledger.Ledger.reject`). Either way
the node is acknowledged, so that it stops re-sending; nothing a node sends can
stop the server.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from fedunlearn.ledger import Ledger
from fedunlearn.requests import ForgetRequest, scenario_request
from fedunlearn.settings import Job

LOG = logging.getLogger("fedunlearn")

SCENARIO = "scenario"


def sender(partition: int) -> str:
    """The ledger's name for a polled node: ``client:K`` (its partition)."""
    return f"client:{partition}"


def scheduled_request(settings: Job) -> ForgetRequest | None:
    """The request the scenario schedules after training (or ``None``)."""
    if settings.request is None:
        return None
    return scenario_request({"seed": settings.seed, **settings.request})


def poll_targets(active: dict[int, int], rnd: int, per_round: int | None,
                 pending: set[int] = frozenset()) -> dict[int, int]:
    """The nodes to ask for requests at the start of round ``rnd``.

    Polling every node every round costs a message per node and round: 1,000 a round
    in a federation of 1,000. Instead a round asks the nodes whose last reply said
    that requests wait (``pending``, node ids: :mod:`client.pending`, so a node that
    trained last round is heard the next), plus a window of ``per_round`` partitions
    that moves on each round, so that every node is asked at least once every
    ``ceil(len(active) / per_round)`` rounds, even one never sampled or whose word was
    lost.

    Parameters
    ----------
    active : dict of partition id to node id
        The nodes that may be polled (connected, not forgotten).
    rnd : int
        The round about to start (1-based), which places the window.
    per_round : int or None
        The window's size; None (or at least ``len(active)``) asks every node.
    pending : set of int
        Node ids that said they hold unsent requests.

    Returns
    -------
    dict of partition id to node id
        The subset of ``active`` to poll, in partition order.
    """
    ordered = sorted(active)
    if per_round is None or per_round >= len(ordered):
        return dict(active)
    start = ((rnd - 1) * per_round) % len(ordered)
    window = {ordered[(start + i) % len(ordered)] for i in range(per_round)}
    return {pid: active[pid] for pid in ordered if pid in window or active[pid] in pending}


def poll_requests(
    grid: Grid, nodes: dict[int, int], timeout: float, ack: dict[int, list[str]] | None = None
) -> list[tuple[int, str, str]]:
    """Ask the nodes in ``nodes`` for the requests their users recorded (``query.requests``).

    Parameters
    ----------
    ack : dict of partition id to keys, optional
        The keys under which each node sent requests that the ledger has now
        recorded or rejected durably; their nodes mark them sent.

    Returns
    -------
    list of (partition id, key, body)
        Each submission with the key the node sent it under (its request id,
        for an honest node) and its body as text.
    """
    by_node = {node: pid for pid, node in nodes.items()}
    connected = set(grid.get_node_ids())  # an offline node would cost the whole timeout
    messages = []
    for pid, node in nodes.items():
        if node not in connected:
            continue
        keys = (ack or {}).get(pid, [])
        content = RecordDict({P.ACK: ConfigRecord({str(i): key for i, key in enumerate(keys)})})
        messages.append(Message(content, message_type=P.query(P.REQUESTS), dst_node_id=node))
    found = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            LOG.warning("node %d did not answer the request poll: %s", node, reply.error.reason)
            continue
        if node not in by_node:  # a reply from a node we did not ask
            continue
        record = reply.content.config_records.get(P.FOUND, ConfigRecord())
        found.extend((by_node[node], str(key), str(body)) for key, body in record.items())
    return found


def intake(ledger: Ledger, partition: int, key: str, body: str) -> str:
    """Record one node submission as a request, or reject it with its reason.

    Never raises for what the node sent: a malformed body, numbers out of range,
    a request in another client's name, or an id already recorded with other
    content or another sender are each kept as a rejection, and the genuine
    request under that id is left as it was.

    Parameters
    ----------
    ledger : Ledger
        The server's ledger.
    partition : int
        The partition of the node that sent it (from node discovery).
    key, body : str
        The ConfigRecord key it came under and its value.

    Returns
    -------
    str
        ``recorded``, ``known`` (already recorded, unchanged) or ``rejected: REASON``.
    """
    who = sender(partition)
    claimed: str | None = key
    try:
        # Whatever the body says, a polled request comes from a client: re-validating
        # it as such refuses federation-wide forms only a scenario may use.
        request = replace(ForgetRequest.from_json(body), origin="client")
        claimed = request.request_id
        if request.client != partition:
            raise ValueError(f"client {partition} sent a request in the name of client "
                             f"{request.client}")
        return "recorded" if ledger.record(request, who) else "known"
    except Exception as exc:  # anything a hostile body triggers is a refusal, not a crash
        reason = f"{exc}".strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        ledger.reject(body, who, reason, claimed)
        return f"rejected: {reason}"


def take_requests(grid: Grid, nodes: dict[int, int], ledger: Ledger, timeout: float,
                  scheduled: Sequence[ForgetRequest] = ()) -> None:
    """Record the scheduled requests and the nodes' requests in the ledger.

    Recording is idempotent (the scenario's request by its content, a node's by
    its id and content), so a request re-sent after a restart is neither lost nor
    duplicated. Every submission is acknowledged once the ledger holds it, as a
    request or as a rejection.
    """
    for request in scheduled:
        if ledger.find(request, SCENARIO) is None:
            ledger.record(request, SCENARIO)
            LOG.info("request %s received: %s-wise from client %d (scenario)",
                     request.request_id, request.kind, request.client)
    handled: dict[int, list[str]] = {}
    for pid, key, body in poll_requests(grid, nodes, timeout):
        outcome = intake(ledger, pid, key, body)
        if outcome.startswith("rejected"):
            LOG.warning("client %d: submission %.40s %s", pid, key, outcome)
        elif outcome == "recorded":
            LOG.info("request %s received from client %d", key, pid)
        handled.setdefault(pid, []).append(key)
    if handled:
        poll_requests(grid, {pid: nodes[pid] for pid in handled}, timeout, ack=handled)
