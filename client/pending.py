"""A ClientApp mod that tells the server, in every reply, that requests wait in the outbox.

The server cannot afford to poll every node of a large federation every round
(:func:`server.intake.poll_targets`). A node that holds unsent forget requests says so
in whatever reply it sends (a training round, an evaluation, a query): the reply
carries ``pending`` (a ConfigRecord, ``count``), and the server polls that node at the
start of its next round. A node without an outbox, or with nothing unsent, adds nothing.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client.node import node_outbox
from fedunlearn import protocol as P

__all__ = ["pending_mod"]


def pending_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler; add ``pending`` to a reply with content when requests wait."""
    reply = call_next(msg, context)
    if reply.has_content():
        with node_outbox(context) as outbox:
            count = outbox.count_unsent() if outbox is not None else 0
        if count:
            reply.content[P.PENDING] = ConfigRecord({"count": count})
    return reply
