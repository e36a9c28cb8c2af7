"""Ask the clients for curvature statistics and aggregate them as they arrive.

Each node answers ``query.curvature`` with the diagonal curvature of its mean loss
on its forget part and on its retained part, and the two counts. Replies are
folded into a :class:`~fedunlearn.unlearning.tis.CurvatureAccumulator` one by one
(memory O(parameters) whatever the number of clients); a malformed reply is
refused with its reason and left out, and too few usable replies fail the request
before anything touches the global model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from fedunlearn.unlearning.curvature import NONNEGATIVE, resolve_estimator
from fedunlearn.unlearning.tis import CurvatureAccumulator, CurvatureReplyError
from server.grid import each_reply
from strategies.replies import reply_node

LOG = logging.getLogger("fedunlearn")
StateDict = dict[str, torch.Tensor]


class CurvatureError(RuntimeError):
    """Too few usable curvature replies, or no forget samples among them."""


@dataclass
class Curvature:
    """Aggregated statistics of one request and what collecting them cost."""

    h: StateDict
    h_prime: StateDict
    replies: int
    refused: list[tuple[int, str]] = field(default_factory=list)
    bytes: int = 0
    flops: int = 0
    seconds: float = 0.0


def fold_reply(acc: CurvatureAccumulator, reply: Message, limit: int | None = None) -> None:
    """Add one ``query.curvature`` reply to ``acc``.

    ``limit`` is the most forget plus retained samples the node may claim (its
    training-set size): larger counts would outweigh every other client in h.

    Raises
    ------
    CurvatureReplyError
        For an error reply, missing metrics, or anything the accumulator refuses;
        ``acc`` is unchanged then.
    """
    if reply.has_error():
        raise CurvatureReplyError(f"client error: {reply.error.reason}")
    content = reply.content
    if "metrics" not in content.metric_records:
        raise CurvatureReplyError("no MetricRecord 'metrics' with the sample counts")
    metrics = dict(content.metric_records[P.METRICS])
    parts = {}
    for part in ("forget", "retain"):
        record = content.array_records.get(P.curvature_key(part))
        parts[part] = record.to_torch_state_dict() if record is not None else None
    if limit is not None:
        claimed = [metrics.get(P.count_key(part), 0) for part in ("forget", "retain")]
        if all(isinstance(c, int | float) for c in claimed) and sum(claimed) > limit:
            raise CurvatureReplyError(f"claims {sum(claimed):.6g} samples, more than the "
                                      f"{limit} the node holds")
    # Counts go in as sent: the accumulator refuses negative or non-integer ones.
    acc.add(parts["forget"], metrics.get(P.count_key("forget"), 0),
            parts["retain"], metrics.get(P.count_key("retain"), 0))


def query_curvature(
    grid: Grid, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord,
    model: torch.nn.Module, estimator: str, *, min_replies: int, timeout: float,
    limits: Mapping[int, int] | None = None,
) -> Curvature:
    """Collect and aggregate curvature from ``nodes`` at the global weights ``arrays``.

    Parameters
    ----------
    grid : Grid
        Flower's grid.
    nodes : list of int
        Every node holding forget or retained data.
    arrays : ArrayRecord
        The trained global model.
    config : ConfigRecord
        Carries the composed config and the request (clients find their parts).
    model : torch.nn.Module
        A model of the architecture (parameter names and shapes of the replies).
    estimator : str
        The configured estimator; replies of a non-negative one may not hold
        negative entries.
    min_replies : int
        Fewer usable replies raise :class:`CurvatureError`.
    timeout : float
        Seconds to wait for the replies.
    limits : mapping of int to int, optional
        Per node id, the most samples a reply may count.
    """
    started = time.perf_counter()
    nonnegative = resolve_estimator(model, estimator) in NONNEGATIVE
    acc = CurvatureAccumulator.for_model(model, nonnegative=nonnegative)
    content = RecordDict({P.ARRAYS: arrays, P.CONFIG: config})
    messages = [Message(content, message_type=P.query(P.CURVATURE), dst_node_id=n) for n in nodes]
    refused: list[tuple[int, str]] = []
    received = flops = 0
    # One reply at a time: the sums are O(parameters), and so is what is held here.
    for reply in each_reply(grid, messages, timeout):
        node = reply_node(reply, messages)
        try:
            fold_reply(acc, reply, (limits or {}).get(node))
            received += sum(r.count_bytes() for r in reply.content.array_records.values())
            flops += int(reply.content.metric_records[P.METRICS].get(P.FLOPS, 0))
        except CurvatureReplyError as exc:
            LOG.warning("curvature reply of node %d refused: %s", node, exc)
            refused.append((node, str(exc)))
    if acc.num_replies < min_replies:
        reasons = "; ".join(f"node {n}: {why}" for n, why in refused[:3])
        raise CurvatureError(f"only {acc.num_replies} of {len(nodes)} curvature replies "
                             f"usable (need {min_replies}){': ' + reasons if reasons else ''}")
    try:
        h, h_prime = acc.result()
    except ValueError as exc:
        raise CurvatureError(str(exc)) from exc
    sent = arrays.count_bytes() * len(nodes)
    return Curvature(h, h_prime, acc.num_replies, refused, sent + received, flops,
                     time.perf_counter() - started)
