"""Telling the nodes what was forgotten: deletion notices, and each receipt to its requester.

Once a request is answered and its model adopted, every node holding its forget
data is told to delete it (``query.delete``), and the requesting node also gets
its receipt with the model the receipt names, which it checks on its own forget
samples before deleting them (its self-check comes back in the reply). Each
confirmation is kept in the ledger (:meth:`fedunlearn.ledger.Ledger.confirm`);
what is not confirmed yet (a node offline, a reply lost, a crash in between) is
sent again at the next round, and a node handles a repeat as a no-op.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from fedunlearn.federation import Federation
from fedunlearn.ledger import Ledger
from fedunlearn.requests import ForgetRequest, materialize
from fedunlearn.settings import Job

LOG = logging.getLogger("fedunlearn")


@dataclass
class Delivery:
    """What one :func:`deliver` call achieved: messages ``sent``, and the partitions that
    ``confirmed`` every notice sent to them or ``failed`` at least one."""

    sent: int = 0
    confirmed: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)


def model_path(out_dir: Path, request_id: str, method: str) -> Path:
    """Where an answer's model is kept (written before its receipt is sealed)."""
    return out_dir / "unlearned" / request_id / f"{method}.pt"


def deliver(grid: Grid, ledger: Ledger, nodes: dict[int, int], settings: Job,
            federation: Federation, out_dir: Path, timeout: float,
            requests: Sequence[ForgetRequest] | None = None, again: bool = False,
            receipts: bool = True) -> Delivery:
    """Send the deletion notices and receipts the ledger has no confirmation of yet.

    Parameters
    ----------
    nodes : dict of partition to node id
        The nodes that can be reached now (a client forgotten whole included: it
        still gets its receipt).
    requests : sequence of ForgetRequest, optional
        The answered requests to deliver; every ``done`` request of the ledger when
        omitted.
    again : bool
        Re-send every deletion notice, confirmed or not (nodes that restarted without
        durable state forget them); receipts already checked are not re-sent.
    receipts : bool
        Send the receipts too; the research job, whose models nobody adopts, sends
        deletion notices only.

    Returns
    -------
    Delivery
        Messages sent, and the partitions that confirmed every notice sent to them or
        failed one (an error, or no reply within ``timeout``).
    """
    labels = federation.splits.train.labels.numpy()
    # Only nodes connected now: one that is offline (a client forgotten whole may leave
    # for good) is tried again once it is back, instead of costing a timeout every round.
    connected = set(grid.get_node_ids())
    nodes = {pid: node for pid, node in nodes.items() if node in connected}
    if requests is None:
        requests = [e.request for e in ledger.all() if e.state == "done"]
    done = Delivery()
    for request in requests:
        confirmed = ledger.confirmations(request.request_id)
        has_receipt = receipts and bool(ledger.receipts(request.request_id))
        forget = materialize(request, federation.train_ids, labels, federation.poisoned)
        due = {}  # node -> (partition, with the receipt); one message per node and request
        for pid in sorted({*forget.clients, request.client}):
            receipt_due = (has_receipt and pid == request.client
                           and confirmed.get(pid) is None)
            if pid in nodes and (again or pid not in confirmed or receipt_due):
                due[nodes[pid]] = (pid, receipt_due)
        if not due:
            continue
        messages = [_notice(settings, request, out_dir, ledger, with_receipt, node)
                    for node, (_, with_receipt) in due.items()]
        done.sent += len(messages)
        answered = set()
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if node not in due:  # a reply from a node we did not ask
                continue
            pid = due[node][0]
            if reply.has_error():
                LOG.warning("client %d did not confirm deleting the data of %s: %s", pid,
                            request.request_id, reply.error.reason)
                continue
            check = reply.content.metric_records.get(P.SELF_CHECK)
            ledger.confirm(request.request_id, pid, None if check is None else dict(check))
            answered.add(pid)
            if check is not None:
                LOG.info("client %d received the receipt of %s; its self-check: %s", pid,
                         request.request_id,
                         ", ".join(f"{k} {float(v):.3g}" for k, v in check.items()))
        asked = {pid for pid, _ in due.values()}
        done.failed |= asked - answered
        done.confirmed |= answered
    done.confirmed -= done.failed
    return done


def _notice(settings: Job, request: ForgetRequest, out_dir: Path, ledger: Ledger,
            with_receipt: bool, node: int) -> Message:
    """A ``query.delete`` message: the request, and for its requester the receipt and
    the model it names."""
    config = ConfigRecord({P.REQUEST: request.to_json(), P.PAYLOAD: settings.payload})
    content = RecordDict({P.CONFIG: config})
    receipts = ledger.receipts(request.request_id)
    if with_receipt and receipts:
        method, receipt = list(receipts.items())[-1]  # the model the federation adopted
        config[P.RECEIPT] = json.dumps(receipt, sort_keys=True)
        state = torch.load(model_path(out_dir, request.request_id, method), weights_only=True)
        content[P.ARRAYS] = ArrayRecord(state)
    return Message(content, message_type=P.query(P.DELETE), dst_node_id=node)
