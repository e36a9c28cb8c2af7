"""Checks on client replies, so that one malformed reply cannot poison an aggregate.

A reply is refused (with a reason the server logs and records) when it carries an
error, misses its records, has arrays of the wrong names, shapes or dtypes, holds
NaN or Inf, or reports a non-positive example count.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message

Signature = dict[str, tuple[tuple[int, ...], str]]


def signature(arrays: ArrayRecord) -> Signature:
    """Names, shapes and dtypes of the arrays in ``arrays``: what a reply must match."""
    return {name: (tuple(arr.shape), str(arr.dtype)) for name, arr in arrays.items()}


def check_metrics(msg: Message, weight_key: str, metrics_key: str = "metrics") -> str | None:
    """Return why the MetricRecord of ``msg`` is unusable, or ``None`` when it is fine."""
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
    return None


def check_train_reply(
    msg: Message,
    expected: Signature,
    weight_key: str = "num-examples",
    arrays_key: str = "arrays",
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
    """
    reason = check_metrics(msg, weight_key)
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
