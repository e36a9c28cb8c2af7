"""The common base of unlearning strategies: a perturbation, then FedAvg phases.

Each method is one small subclass in its own file of ``strategies/``. It says
how it changes the trained weights (:meth:`UnlearningStrategy.perturb`), which
rounds follow (:meth:`UnlearningStrategy.phases`), its hyper-parameters as typed
keyword-only constructor arguments, and, as class attributes, its registry
``name``, its config ``section`` (``conf/unlearn/method/<section>.yaml``, read as
``unlearn.<section>``) and what it ``needs`` from the server. Defining the class
registers it (:mod:`strategies.registry`); nothing else learns its name.

The strategy runs itself (:meth:`UnlearningStrategy.run`), as Flower's
``Strategy.start`` does: perturb, evaluate, then each phase's rounds, where
``configure_train`` adds the phase's order to every message and samples from
the phase's participants (the way Flower's FedProx adds ``proximal-mu``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedunlearn import protocol as P
from strategies.fedavg import FederatedAveraging
from strategies.rounds import EvaluateFn, OnRound, RoundRecord

StateDict = dict[str, torch.Tensor]

#: What a method may declare in ``needs``: the server provides each before ``run``.
#: ``curvature``: ``(h, h')`` aggregated from the clients (TIS paper Eq. 30);
#: ``model``: an :class:`Architecture` (parameter names, layers, the model's name);
#: ``history``: the clients' updates kept during training every ``interval`` rounds
#: (:class:`server.history.UpdateHistory`); a method that needs it takes an ``interval``
#: setting, which training reads to keep it (FedEraser). ``fedunlearn serve`` keeps none.
NEEDS = ("curvature", "history", "model")


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

    ``order`` becomes ConfigRecord entries of every training message
    (:data:`fedunlearn.protocol.ORDER_KEYS`: data, mode, lr, epochs, grad-clip).
    """

    name: str
    rounds: int
    participants: list[int]
    order: dict[str, Any] = field(default_factory=dict)
    # A recovery phase may stop early (Recovery.epsilon): its rounds are then the most.
    adaptive: bool = False


@dataclass(frozen=True)
class Recovery:
    """What every method shares: the original training and the recovery rounds.

    Attributes
    ----------
    train_rounds : int
        Rounds of the original training (Retrain runs as many).
    recovery_rounds : int
        FedAvg rounds on retained data after a perturbation.
    lr : float
        Learning rate of those rounds.
    local_epochs : int
        Local epochs per round.
    epsilon : float, optional
        Adaptive recovery: a recovery phase stops once the retain nodes' validation
        accuracy is back within ``epsilon`` (a fraction, e.g. 0.01) of the trained
        model's, after at most ``max_rounds``; None runs ``recovery_rounds`` rounds.
    max_rounds : int
        The most rounds of an adaptive recovery phase.
    train_lr : float, optional
        Learning rate of the original training (``train.lr``); None: ``lr``.
    """

    train_rounds: int
    recovery_rounds: int
    lr: float
    local_epochs: int
    epsilon: float | None = None
    max_rounds: int = 0
    train_lr: float | None = None


@dataclass(frozen=True)
class Architecture:
    """The ``model`` provision: the configured architecture's name and a module of it."""

    name: str
    module: torch.nn.Module


@dataclass
class RunResult:
    """What :meth:`UnlearningStrategy.run` did: the final model and its history."""

    arrays: ArrayRecord
    perturbed: dict[str, float]
    records: list[RoundRecord]
    perturb_seconds: float


class UnlearningStrategy(FederatedAveraging):
    """FedAvg plus a perturbation and a list of phases; subclasses fill both in.

    Parameters
    ----------
    targets : Targets
        Retain and forget nodes, and the request.
    recovery : Recovery
        Rounds and learning rate every method shares.
    seed, fraction_train, limits, aggregator, ranks
        See :class:`~strategies.fedavg.FederatedAveraging`.
    """

    name: ClassVar[str] = ""
    section: ClassVar[str | None] = None
    needs: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):  # a concrete method: it registers itself
            from strategies.registry import register

            register(cls)

    def __init__(self, targets: Targets, recovery: Recovery, *, seed: int = 0,
                 fraction_train: float = 1.0, limits: Mapping[int, int] | None = None,
                 aggregator: FedAvg | None = None,
                 ranks: Mapping[int, int] | None = None) -> None:
        super().__init__(participants=targets.retain_nodes, fraction_train=fraction_train,
                         seed=seed, limits=limits, aggregator=aggregator, ranks=ranks)
        self.targets = targets
        self.recovery_settings = recovery
        self.label = self.name
        self.phase: Phase | None = None
        self.validation: dict[str, float | None] = {}

    # ---- what a method says --------------------------------------------------------
    @classmethod
    def variants(cls, options: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The runs one configured method makes: ``(label, constructor options)``.

        One run by default; a method with a swept setting (TIS's gammas) returns one
        run per value.
        """
        return [(cls.name, dict(options))]

    def provide(self, provisions: Mapping[str, Any]) -> None:
        """Receive what :attr:`needs` declared (keys of :data:`NEEDS`), before :meth:`run`.

        Raises ``ValueError`` (one line) when a provision does not fit the method,
        e.g. a layer selector the model lacks: the server checks this before training.
        """

    def results(self) -> dict[str, float]:
        """Method-specific numbers for the report (e.g. TIS's share of reset entries);
        with adaptive recovery, the validation accuracy before and after and the
        recovery rounds used."""
        return {k: v for k, v in self.validation.items() if v is not None}

    def perturb(self, trained: StateDict, initial: StateDict) -> StateDict:
        """The weights the phases start from; the base keeps the trained ones."""
        return trained

    def phases(self) -> list[Phase]:
        """The rounds after the perturbation; the base fine-tunes on retained data."""
        return [self.recovery(self.recovery_settings.recovery_rounds)]

    def recovery(self, rounds: int, name: str = "recovery", adaptive: bool = True) -> Phase:
        """FedAvg on retained data of the retain nodes only (adaptive unless told not)."""
        r = self.recovery_settings
        return Phase(name, rounds, self.targets.retain_nodes, {
            P.DATA: "retain", P.MODE: "descent", P.LR: r.lr, P.EPOCHS: r.local_epochs,
            P.REQUEST: self.targets.request_json,
        }, adaptive=adaptive)

    # ---- running ---------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg messages to the current phase's participants, carrying its order."""
        if self.phase is not None:
            config[P.PHASE] = self.phase.name
            config.update(self.phase.order)
        return super().configure_train(server_round, arrays, config, grid)

    def run(self, grid: Grid, trained: StateDict, initial: StateDict, *, config: ConfigRecord,
            evaluate_fn: EvaluateFn | None, timeout: float,
            on_round: OnRound | None = None) -> RunResult:
        """Perturb ``trained``, evaluate it (round 0), then run every phase's rounds.

        Parameters
        ----------
        grid : Grid
            Flower's grid.
        trained, initial : dict of str to Tensor
            The trained global model and its pre-training weights.
        config : ConfigRecord
            Sent with every training message (the run's payload); each phase adds
            its order.
        evaluate_fn : callable, optional
            Flower's ``evaluate_fn(server_round, arrays) -> MetricRecord``.
        timeout : float
            Seconds to wait for one round's replies.
        on_round : callable, optional
            Receives every round's record.
        """
        started = time.perf_counter()
        arrays = ArrayRecord(self.perturb(trained, initial))
        perturb_seconds = time.perf_counter() - started
        perturbed = dict(evaluate_fn(0, arrays) or {}) if evaluate_fn else {}
        records: list[RoundRecord] = []

        def keep(record: RoundRecord) -> None:
            records.append(record)
            if on_round:
                on_round(record)

        r = self.recovery_settings
        phases = self.phases()
        baseline = None
        if r.epsilon is not None and any(p.adaptive for p in phases):
            # The stopping rule's reference: the trained model on the same validation splits
            # (the nodes see them; no Retrain is needed to know when to stop).
            # The request rides along: the nodes leave a forgotten class out of validation.
            checks = ConfigRecord({**config, P.REQUEST: self.targets.request_json})
            baseline = self.validate(grid, ArrayRecord(trained), self.targets.retain_nodes,
                                     checks, timeout)
            self.validation = {"val_before": baseline}
        for phase in phases:
            if phase.rounds < 1 or not phase.participants:
                continue
            self.phase = phase
            self.participants = list(phase.participants)
            rounds, until = phase.rounds, None
            if phase.adaptive and baseline is not None:
                rounds = r.max_rounds
                until = self._recovered(grid, baseline, checks, timeout)
            arrays = self.run_rounds(grid, arrays, rounds=rounds, config=config,
                                     evaluate_fn=evaluate_fn, timeout=timeout,
                                     phase=f"{self.label}:{phase.name}", on_round=keep,
                                     until=until)
        return RunResult(arrays, perturbed, records, perturb_seconds)

    def _recovered(self, grid: Grid, baseline: float, config: ConfigRecord,
                   timeout: float) -> Callable[[int, ArrayRecord], bool]:
        """The stopping rule: validation accuracy within epsilon of ``baseline``."""
        epsilon = self.recovery_settings.epsilon or 0.0

        def until(server_round: int, arrays: ArrayRecord) -> bool:
            accuracy = self.validate(grid, arrays, self.participants, config, timeout)
            self.validation["val_after"] = accuracy
            self.validation["recovery_rounds_used"] = server_round
            return accuracy is not None and accuracy >= baseline - epsilon

        return until
