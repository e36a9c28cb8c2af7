"""Checks on client replies, so that one malformed reply cannot poison an aggregate.

A reply is refused (with a reason the server logs and records) when it carries an
error, misses its records, has arrays of the wrong names, shapes or dtypes, holds
NaN or Inf, or reports a non-positive example count or one above what its node
holds (one reply claiming 10^12 samples would otherwise outweigh every other).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.common.constant import SUPERLINK_NODE_ID

from fedunlearn import protocol as P

Signature = dict[str, tuple[tuple[int, ...], str]]


def signature(arrays: ArrayRecord) -> Signature:
    """Names, shapes and dtypes of the arrays in ``arrays``: what a reply must match."""
    return {name: (tuple(arr.shape), str(arr.dtype)) for name, arr in arrays.items()}


def reply_node(reply: Message, sent: Iterable[Message]) -> int:
    """The node a reply answers for.

    A reply from a node names it as its source; an error the SuperLink makes for
    a node that never answered (lost, timed out) names the SuperLink instead, so
    the node is found through the message it replies to.

    Parameters
    ----------
    reply : Message
        A reply pulled from the grid.
    sent : iterable of Message
        The messages sent (their ids are set once the grid pushed them).
    """
    node = reply.metadata.src_node_id
    if node != SUPERLINK_NODE_ID:
        return node
    addressed = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
    return addressed.get(reply.metadata.reply_to_message_id, node)


def check_metrics(
    msg: Message, weight_key: str, metrics_key: str = P.METRICS, limit: int | None = None
) -> str | None:
    """Return why the MetricRecord of ``msg`` is unusable, or ``None`` when it is fine.

    ``limit`` is the most ``weight_key`` may be (the node's training samples).
    """
    if msg.has_error():
        return f"client error: {msg.error.reason}"
    if metrics_key not in msg.content.metric_records:
        return f"no MetricRecord '{metrics_key}'"
    metrics = msg.content.metric_records[metrics_key]
    if weight_key not in metrics:
        return f"MetricRecord lacks '{weight_key}'"
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(float(v)) for v in values):
            return f"metric '{key}' is not finite"
    weight = metrics[weight_key]
    if isinstance(weight, list) or weight <= 0:
        return f"'{weight_key}' must be a positive number, got {weight}"
    if limit is not None and weight > limit:
        return f"'{weight_key}' is {weight:.6g}, more than the {limit} training samples " \
               "the node holds"
    return None


def check_train_reply(
    msg: Message,
    expected: Signature,
    weight_key: str = P.NUM_EXAMPLES,
    arrays_key: str = P.ARRAYS,
    limit: int | None = None,
) -> str | None:
    """Return why a training reply must be refused, or ``None`` when it is usable.

    Parameters
    ----------
    msg : Message
        The reply.
    expected : Signature
        What the arrays must look like (see :func:`signature` of the global model).
    weight_key : str
        The metric holding the example count FedAvg weights by.
    arrays_key : str
        The key of the reply's ArrayRecord.
    limit : int, optional
        The most the example count may be: the training samples the node reported.
    """
    reason = check_metrics(msg, weight_key, limit=limit)
    if reason:
        return reason
    if arrays_key not in msg.content.array_records:
        return f"no ArrayRecord '{arrays_key}'"
    got = msg.content.array_records[arrays_key]
    if set(got.keys()) != set(expected):
        missing = sorted(set(expected) - set(got.keys()))[:3]
        extra = sorted(set(got.keys()) - set(expected))[:3]
        return f"array names differ (missing {missing}, unexpected {extra})"
    for name, (shape, dtype) in expected.items():
        arr = got[name]
        if tuple(arr.shape) != shape or str(arr.dtype) != dtype:
            return f"array '{name}' is {arr.dtype}{list(arr.shape)}, expected {dtype}{list(shape)}"
        values = arr.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"array '{name}' holds NaN or Inf"
    return None
