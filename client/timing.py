"""A ClientApp mod that stamps every reply with where its time went on the node.

The reply carries ``timing`` (a ConfigRecord of Unix times, seconds): ``process-start``
(when the process that handled the message started: a fresh ``flwr-clientapp``, or a
child forked by the warm executor), ``handler-start`` and ``handler-end``. With the
server's push and collection times (:class:`server.grid.CollectingGrid`), a message's
life splits into pickup, process start, compute and reply; all on one clock when the
processes share a host (``bench/deployment``), only roughly across machines.
"""

from __future__ import annotations

import os
import time

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedunlearn import protocol as P

__all__ = ["process_start", "timing_mod"]


def process_start() -> float:
    """Unix time this process started (Linux ``/proc``; ``nan`` elsewhere)."""
    try:
        with open("/proc/self/stat") as handle:
            line = handle.read()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
    except OSError:
        return float("nan")
    # Field 22, start time in clock ticks after boot, follows the command's last ')'.
    # Against /proc/uptime (1/100 s), not btime (whole seconds).
    ticks = int(line[line.rindex(")") + 2:].split()[19])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def timing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler; add ``timing`` to a reply that has content (not to errors)."""
    started = time.time()
    reply = call_next(msg, context)
    if reply.has_content():
        reply.content[P.TIMING] = ConfigRecord({
            "process-start": process_start(), "handler-start": started,
            "handler-end": time.time()})
    return reply
