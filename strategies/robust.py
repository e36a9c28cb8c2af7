"""Byzantine-robust aggregation: Flower's own rules, chosen in the config.

The federation's strategies (:class:`~strategies.fedavg.FederatedAveraging` and
every unlearning method over it) check replies themselves, then hand the usable
ones to one of Flower's aggregation strategies for the arrays. FedAvg is the
default; the others bound what a minority of rogue nodes can do to the model.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

#: Config name -> Flower strategy that aggregates the arrays.
AGGREGATORS: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "trimmed_mean": FedTrimmedAvg,
    "median": FedMedian,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
}


def make_aggregator(name: str, **options: Any) -> FedAvg:
    """A Flower strategy used only for its ``aggregate_train`` (arrays).

    Parameters
    ----------
    name : str
        One of :data:`AGGREGATORS`.
    **options
        Settings of the rule (``beta`` for trimmed_mean, ``num_malicious_nodes``
        for krum, multikrum and bulyan, ``num_nodes_to_select`` for multikrum);
        settings the chosen rule does not take are ignored, so one config
        section serves every rule.

    Raises
    ------
    ValueError
        An unknown name or a setting the rule refuses (one line).
    """
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregation '{name}'; known: {', '.join(AGGREGATORS)}")
    cls = AGGREGATORS[name]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted}
    # Nodes are chosen by our strategies, never by the aggregator: no minimums of its own.
    kwargs.update(min_train_nodes=1, min_available_nodes=1, fraction_evaluate=0.0)
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # FedAvg warns about fraction_evaluate=0
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"aggregation '{name}': {exc}") from exc
    finally:
        flwr_log.setLevel(level)
