"""A rogue ClientApp for robustness studies: honest on most nodes, hostile on some.

It wraps the honest handlers of :mod:`client.app`. On the partitions it is told
to attack it poisons every training reply (all weights set to one value, and
optionally an inflated example count) and slips hostile bodies into its answer
to the server's request poll. Tests build it into a Flower app to attack a real
SuperLink; ``bench/robust.py`` runs it in simulation to measure what each
aggregation rule does against one rogue node.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import app as honest
from client.node import partition_id
from fedunlearn import protocol as P


def rogue_app(
    partitions: Collection[int],
    *,
    value: float = 0.5,
    num_examples: int | None = None,
    requests: Sequence[str] = (),
) -> ClientApp:
    """A ClientApp that is honest except on ``partitions``.

    Parameters
    ----------
    partitions : collection of int
        The partition ids whose nodes misbehave.
    value : float
        Every weight of a rogue training reply is set to this.
    num_examples : int, optional
        The example count a rogue training reply claims; None keeps the honest
        count (an in-bounds attack that only a robust aggregation rule can bound).
    requests : sequence of str
        Bodies a rogue node adds to its answer to each request poll (malformed,
        out of range, in another client's name...), under keys ``rogue-0``...
    """
    app = ClientApp()
    app.query(P.NODEINFO)(honest.nodeinfo)
    app.query(P.CURVATURE)(honest.curvature)
    app.query(P.DELETE)(honest.delete)
    app.evaluate()(honest.evaluate)

    def rogue(context: Context) -> bool:
        return partition_id(context) in set(partitions)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = honest.train(msg, context)
        if not rogue(context):
            return reply
        arrays = reply.content.array_records[P.ARRAYS]
        poisoned = ArrayRecord({k: Array(np.full(a.shape, value, dtype=a.numpy().dtype))
                                for k, a in arrays.items()})
        metrics = MetricRecord(dict(reply.content.metric_records[P.METRICS]))
        if num_examples is not None:
            metrics[P.NUM_EXAMPLES] = num_examples
        return Message(RecordDict({P.ARRAYS: poisoned, P.METRICS: metrics}), reply_to=msg)

    @app.query(P.REQUESTS)
    def poll(msg: Message, context: Context) -> Message:
        reply = honest.requests(msg, context)
        if not rogue(context):
            return reply
        found = ConfigRecord(dict(reply.content.config_records[P.FOUND]))
        for i, body in enumerate(requests):
            found[f"rogue-{i}"] = body
        return Message(RecordDict({P.FOUND: found}), reply_to=msg)

    return app
