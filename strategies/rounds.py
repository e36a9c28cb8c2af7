"""The round loop every strategy runs: configure, send, aggregate, evaluate, record.

:meth:`strategies.fedavg.FederatedAveraging.run_rounds` drives it for training
and for every phase of an unlearning method; only Flower's strategy methods
(``configure_train``, ``aggregate_train``) and the grid are involved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.exception import AggregationError

from fedunlearn.errors import UserError


class RoundError(UserError, AggregationError):
    """A round produced no usable reply (the last good model is kept); one line.

    Flower's own aggregation error, and a problem the user can act on (the nodes'
    refusals are in the message): reported as one line, exit code 2.
    """


class TooFewReplies(RoundError):
    """A round got fewer usable replies than it needs, on every try (one line).

    The message names the round, how many usable replies came, how many were
    needed, and the nodes that were refused or silent on the last try.
    """


@dataclass
class RoundRecord:
    """What one round did and cost; one line of a run's ``metrics.jsonl``."""

    phase: str
    round: int
    rounds: int
    nodes: int
    refused: int
    seconds: float
    eval_seconds: float = 0.0
    #: How often the round's messages were sent: 1, plus one per retry after too few
    #: usable replies. ``nodes`` counts the try that was aggregated; ``refused`` and
    #: ``missing`` (messages without a reply by the timeout) count every try.
    tries: int = 1
    missing: int = 0
    client_metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Flat JSON-ready dict."""
        return asdict(self)


#: Central evaluation in Flower's shape: ``evaluate_fn(server_round, arrays)``.
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
OnRound = Callable[[RoundRecord], None]
