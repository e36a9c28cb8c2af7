"""Client behaviours a training order can ask for, registered in one place.

A method's phase names a mode in its order (``protocol.MODE``); the node runs the
function registered under that name with :func:`mode`. A new client-side
behaviour (a projected step, a proximal term) is one decorated function here;
nothing else branches on the name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedunlearn.data import ImageData
from fedunlearn.training import TrainStats


@dataclass(frozen=True)
class Local:
    """What a mode works with: the node's data by selection and a bound ``fit``.

    ``data(which)`` returns ``all``, ``retain`` or ``forget`` training data of this
    node for the order's request; ``fit(data, epochs=..., ascent=...)`` trains the
    received model in place with the order's learning rate, clip and mask.
    """

    data: Callable[[str], ImageData]
    fit: Callable[..., TrainStats]
    selection: str
    epochs: int


@dataclass(frozen=True)
class Outcome:
    """What a mode did: examples it learned from (the reply's weight), last stats, FLOPs."""

    num_examples: int
    stats: TrainStats
    flops: int


Mode = Callable[[Local], Outcome]
MODES: dict[str, Mode] = {}


def mode(name: str) -> Callable[[Mode], Mode]:
    """Register a client behaviour under ``name`` (the value of a training order's mode)."""
    def register(fn: Mode) -> Mode:
        MODES[name] = fn
        return fn
    return register


def _one_pass(local: Local, ascent: bool) -> Outcome:
    data = local.data(local.selection)
    if not len(data):
        raise ValueError(f"no local '{local.selection}' data")
    stats = local.fit(data, epochs=local.epochs, ascent=ascent)
    return Outcome(stats.num_examples, stats, stats.flops)


@mode("descent")
def descent(local: Local) -> Outcome:
    """Plain local SGD on the selected data (FedAvg training and recovery)."""
    return _one_pass(local, ascent=False)


@mode("ascent")
def ascent(local: Local) -> Outcome:
    """Gradient ascent on the selected data (GA: maximize the loss on forget data)."""
    return _one_pass(local, ascent=True)


@mode("gda")
def gradient_descent_ascent(local: Local) -> Outcome:
    """Per epoch: ascent on the forget part, then descent on the retained part (GDA)."""
    forget, retain = local.data("forget"), local.data("retain")
    steps = []
    for _ in range(local.epochs):
        if len(forget):
            steps.append(local.fit(forget, epochs=1, ascent=True))
        if len(retain):
            steps.append(local.fit(retain, epochs=1))
    if not steps:
        raise ValueError("no local data for gda")
    return Outcome(len(forget) + len(retain), steps[-1], sum(s.flops for s in steps))
