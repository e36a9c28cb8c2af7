"""The server's Grid, collecting replies at a short interval: :class:`CollectingGrid`.

Flower 1.42's deployment Grid (``flwr/superlink/grid/http_grid.py``,
``send_and_receive``) pulls replies, then sleeps 3 s before it pulls again: a round
whose replies arrive 0.1 s after the push still waits 3 s. This Grid pushes and pulls
with the Grid's own ``push_messages`` and ``pull_messages`` calls and pulls every
``runtime.collect_interval`` seconds instead (a pull costs a few milliseconds on both
sides). It also keeps each message's timeline (pushed, collected, and the node's
``timing`` record: :mod:`client.timing`) for ``bench/deployment``, and which nodes
said in their last reply that forget requests wait in their outbox
(:mod:`client.pending`), so that the server polls them without polling everyone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedunlearn import protocol as P

__all__ = ["CollectingGrid", "each_reply"]

# Timelines kept at most (a long serve run sends many messages; the newest count).
TIMELINE_LIMIT = 10_000


class CollectingGrid(Grid):
    """A Grid around ``inner`` whose ``send_and_receive`` pulls every ``interval`` s.

    Parameters
    ----------
    inner : Grid
        The runtime's Grid (deployment or simulation); every other call goes to it.
    interval : float
        Seconds between two pulls while replies are missing.
    """

    def __init__(self, inner: Grid, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"runtime.collect_interval must be > 0 s, got {interval}")
        self.inner = inner
        self.interval = float(interval)
        # One dict per message: type, node, pushed, collected (Unix s) and the node's
        # timing record (process-start, handler-start, handler-end) when it replied.
        self.timeline: list[dict[str, float | int | str]] = []
        # Node ids whose last reply with content carried a positive ``pending`` count.
        self.pending: set[int] = set()

    # Everything but collection is the inner Grid's.
    def set_run(self, run: Run) -> None:  # noqa: D102
        self.inner.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self.inner.run

    def create_message(self, *args, **kwargs) -> Message:  # noqa: ANN002, ANN003, D102
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``; pull until every one has a reply or ``timeout`` s passed.

        Same contract as Flower's ``Grid.send_and_receive``: the replies that came,
        in arrival order; ``timeout=None`` waits for all.
        """
        return list(self.stream(messages, timeout=timeout))

    def stream(self, messages: Iterable[Message], *,
               timeout: float | None = None) -> Iterator[Message]:
        """:meth:`send_and_receive`, but each reply is handed over as soon as it is
        pulled, so that a caller that folds replies one by one (TIS's curvature sums)
        holds one reply at a time, not all of them: 1,000 curvature replies of a few
        MB each would otherwise sit in memory together."""
        messages = list(messages)
        pushed_at = time.time()
        ids = list(self.push_messages(messages))
        started = {mid: {"type": m.metadata.message_type, "node": int(m.metadata.dst_node_id),
                         "pushed": pushed_at} for mid, m in zip(ids, messages, strict=True)}
        del messages
        waiting = set(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting:
            got = list(self.pull_messages(waiting))
            now = time.time()
            while got:
                reply = got.pop(0)  # not kept here once handed over
                mid = reply.metadata.reply_to_message_id
                waiting.discard(mid)
                self._record(started.get(mid), reply, now)
                self._note_pending(started.get(mid), reply)
                yield reply
                del reply
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval if deadline is None
                       else max(0.0, min(self.interval, deadline - time.monotonic())))

    def _note_pending(self, entry: dict | None, reply: Message) -> None:
        """Remember whether the node that sent ``reply`` holds unsent requests.

        The node is the one the message went to (a reply's own source id is not
        trusted), and a count that is not a positive whole number counts as none.
        """
        if entry is None or not reply.has_content():
            return
        node = int(entry["node"])
        record = reply.content.config_records.get(P.PENDING)
        count = record.get("count", 0) if record is not None else 0
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            self.pending.add(node)
        else:
            self.pending.discard(node)

    def _record(self, entry: dict | None, reply: Message, collected: float) -> None:
        if entry is None:
            return
        entry = {**entry, "collected": collected}
        if reply.has_content() and P.TIMING in reply.content.config_records:
            entry.update({k: float(v)
                          for k, v in reply.content.config_records[P.TIMING].items()})
        self.timeline.append(entry)
        del self.timeline[:-TIMELINE_LIMIT]


def each_reply(grid: Grid, messages: Iterable[Message], timeout: float | None
               ) -> Iterator[Message]:
    """The replies to ``messages`` one at a time as they are collected
    (:meth:`CollectingGrid.stream`); any other Grid gives its list of replies."""
    stream = getattr(grid, "stream", None)
    if stream is not None:
        return stream(messages, timeout=timeout)
    return iter(grid.send_and_receive(messages, timeout=timeout))
