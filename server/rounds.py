"""The round driver: configure, send, aggregate, evaluate, record; for any phase.

Later phases (unlearning, recovery) reuse it with their own strategy and the
subset of nodes they address; the driver only knows Flower's strategy methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from strategies.fedavg import FederatedAveraging


class RoundError(RuntimeError):
    """A round produced no usable reply."""


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
    client_metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Flat JSON-ready dict."""
        return asdict(self)


Evaluate = Callable[[ArrayRecord], dict[str, float]]
OnRound = Callable[[RoundRecord], None]


def run_rounds(
    grid: Grid,
    strategy: FederatedAveraging,
    arrays: ArrayRecord,
    *,
    rounds: int,
    config: ConfigRecord,
    evaluate: Evaluate | None,
    timeout: float,
    phase: str,
    on_round: OnRound | None = None,
) -> ArrayRecord:
    """Run ``rounds`` FedAvg rounds of ``strategy`` from ``arrays``.

    Parameters
    ----------
    grid : Grid
        Flower's grid.
    strategy : FederatedAveraging
        Chooses nodes, builds messages, checks and aggregates replies.
    arrays : ArrayRecord
        The global model to start from.
    rounds : int
        Number of rounds.
    config : ConfigRecord
        Sent to the clients with every training message.
    evaluate : callable, optional
        Centralized evaluation of the global model after each round.
    timeout : float
        Seconds to wait for one round's replies.
    phase : str
        Name recorded with each round (``"train"``, ``"recovery"``...).
    on_round : callable, optional
        Receives each round's :class:`RoundRecord` (progress, results file).

    Returns
    -------
    ArrayRecord
        The global model after the last round.

    Raises
    ------
    RoundError
        When a round gets no usable reply (the last good model is not replaced).
    """
    for rnd in range(1, rounds + 1):
        started = time.perf_counter()
        refused_before = len(strategy.refused)
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(config)), grid))
        replies = grid.send_and_receive(messages, timeout=timeout)
        new_arrays, metrics = strategy.aggregate_train(rnd, replies)
        refused = strategy.refused[refused_before:]
        if new_arrays is None:
            reasons = "; ".join(f"node {node}: {why}" for _, node, why in refused[:3])
            raise RoundError(f"{phase} round {rnd}: no usable reply from {len(messages)} "
                             f"node(s){': ' + reasons if reasons else ''}")
        arrays = new_arrays
        eval_started = time.perf_counter()
        evaluation = evaluate(arrays) if evaluate else {}
        finished = time.perf_counter()
        record = RoundRecord(
            phase=phase,
            round=rnd,
            rounds=rounds,
            nodes=len(messages),
            refused=len(refused),
            seconds=finished - started,
            eval_seconds=finished - eval_started,
            client_metrics={k: float(v) for k, v in (metrics or {}).items()},
            evaluation=evaluation,
        )
        if on_round:
            on_round(record)
    return arrays
