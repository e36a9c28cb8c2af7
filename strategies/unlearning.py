"""The common base of unlearning strategies: a perturbation, then FedAvg phases.

Each method is one small subclass that says how it changes the trained weights
(:meth:`UnlearningStrategy.perturb`) and which rounds follow
(:meth:`UnlearningStrategy.phases`); the server's round driver runs the phases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from flwr.serverapp.strategy import FedAvg

from strategies.fedavg import FederatedAveraging

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Targets:
    """Who holds what for one request.

    Attributes
    ----------
    retain_nodes : list of int
        Nodes with retained training data (a client-wise target is not among them).
    forget_nodes : list of int
        Nodes holding part of the forget set.
    request_json : str
        The request, sent to clients so that each finds its own forget samples.
    """

    retain_nodes: list[int]
    forget_nodes: list[int]
    request_json: str


@dataclass(frozen=True)
class Phase:
    """Rounds of FedAvg with one set of nodes and one training order for them.

    ``order`` becomes ConfigRecord entries of every training message: ``data``
    (all, retain, forget), ``mode`` (descent, ascent, gda), ``lr``, ``epochs``,
    ``grad-clip``.
    """

    name: str
    rounds: int
    participants: list[int]
    order: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Hyper-parameters every method may read (from ``cfg.unlearn`` and ``cfg.train``)."""

    train_rounds: int
    recovery_rounds: int
    recovery_lr: float
    local_epochs: int
    extra: dict[str, Any] = field(default_factory=dict)


class UnlearningStrategy(FederatedAveraging):
    """FedAvg plus a perturbation and a list of phases; subclasses fill both in.

    Parameters
    ----------
    targets : Targets
        Retain and forget nodes, and the request.
    settings : Settings
        Rounds and learning rates.
    seed : int
        Seeds node sampling (see :class:`FederatedAveraging`).
    limits, aggregator
        Per-node example limits and the aggregation rule (see
        :class:`FederatedAveraging`).
    """

    name: ClassVar[str] = "base"

    def __init__(self, targets: Targets, settings: Settings, seed: int = 0,
                 fraction_train: float = 1.0, limits: Mapping[int, int] | None = None,
                 aggregator: FedAvg | None = None) -> None:
        super().__init__(participants=targets.retain_nodes, fraction_train=fraction_train,
                         seed=seed, limits=limits, aggregator=aggregator)
        self.targets = targets
        self.settings = settings

    def perturb(self, trained: StateDict, initial: StateDict) -> StateDict:
        """The weights the phases start from; the base keeps the trained ones."""
        return trained

    def phases(self) -> list[Phase]:
        """The rounds after the perturbation; the base fine-tunes on retained data."""
        return [self.recovery(self.settings.recovery_rounds)]

    def recovery(self, rounds: int, name: str = "recovery") -> Phase:
        """FedAvg on retained data of the retain nodes only."""
        return Phase(name, rounds, self.targets.retain_nodes, {
            "data": "retain", "mode": "descent", "lr": self.settings.recovery_lr,
            "epochs": self.settings.local_epochs, "request": self.targets.request_json,
        })
