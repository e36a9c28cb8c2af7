"""Plan and run the configured unlearning methods for one request.

:func:`plan` turns ``unlearn.methods`` into runs through the registry (each
method checks its own config section); :func:`make_strategy` builds one run's
strategy; :class:`Provider` gives each strategy what it declared it ``needs``
(the model's architecture, the clients' curvature statistics, computed once per
request, the clients' updates kept during training); :func:`run_method` lets the
strategy run itself and measures the cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from fedunlearn.settings import Job
from server.curvature import Curvature, query_curvature
from server.evaluation import UnlearningEvaluator
from server.history import UpdateHistory
from server.training import TrainOutcome, aggregator
from strategies import Architecture, Recovery, Targets, UnlearningStrategy, registry
from strategies.rounds import RoundRecord

LOG = logging.getLogger("fedunlearn")
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """One method run: its report label, its class and its checked constructor options."""

    label: str
    cls: type[UnlearningStrategy]
    options: dict[str, Any] = field(default_factory=dict)


def plan(settings: Job) -> list[MethodSpec]:
    """The runs of ``unlearn.methods``, in order (a swept method runs once per value).

    Raises
    ------
    ValueError
        An unknown method, or a setting its constructor refuses (one line naming it).
    """
    return [MethodSpec(label, cls, opts)
            for label, cls, opts in registry.plan(list(settings.methods), settings.unlearn)]


def recovery(settings: Job) -> Recovery:
    """The settings every method shares."""
    return Recovery(train_rounds=settings.retrain_rounds,
                    recovery_rounds=settings.recovery_rounds, lr=settings.recovery_lr,
                    local_epochs=settings.train.local_epochs,
                    epsilon=settings.recovery_epsilon,
                    max_rounds=settings.recovery_max_rounds, train_lr=settings.train.lr)


def make_strategy(spec: MethodSpec, settings: Job, targets: Targets,
                  limits: Mapping[int, int] | None = None,
                  nodes: Mapping[int, int] | None = None) -> UnlearningStrategy:
    """The strategy of one method run for one request (not yet provided for);
    ``nodes`` (partition -> node id) ranks the nodes the same in every run."""
    strategy = spec.cls(targets, recovery(settings), seed=settings.seed,
                        fraction_train=settings.train.fraction_train, limits=limits,
                        aggregator=aggregator(settings),
                        ranks={node: pid for pid, node in (nodes or {}).items()},
                        **spec.options)
    strategy.label = spec.label
    return strategy


def check_methods_fit(settings: Job, model: torch.nn.Module) -> None:
    """Build every planned run and give it the model: what ``run`` would refuse, now;
    and refuse a ``serve.method`` that needs the training's update history, which a live
    federation does not keep.

    Raises
    ------
    ValueError
        One line naming the method's setting (e.g. a layer the model lacks).
    """
    arch = Architecture(settings.model, model)
    for spec in plan(settings):
        strategy = make_strategy(spec, settings, Targets([], [], ""))
        if "model" in spec.cls.needs:
            strategy.provide({"model": arch})
    serving = registry.METHODS.get(settings.serve_method)
    if serving is not None and "history" in serving.needs:
        raise ValueError(f"serve.method: {serving.name} needs the clients' updates kept "
                         "during training, and `fedunlearn serve` keeps none; choose "
                         "another method")


class Provider:
    """What methods need for one request, each computed at most once.

    Parameters
    ----------
    grid, outcome, targets
        The federation, the trained model (and the job's settings), who holds what.
    """

    def __init__(self, grid: Grid, outcome: TrainOutcome, targets: Targets) -> None:
        self.grid, self.outcome, self.targets = grid, outcome, targets
        self.settings = outcome.settings
        self.made: dict[str, Any] = {}
        self._makers: dict[str, Callable[[], Any]] = {
            "model": lambda: Architecture(self.settings.model, outcome.evaluator.model),
            "curvature": self._curvature,
            "history": self._history,
        }

    def __call__(self, needs: tuple[str, ...]) -> dict[str, Any]:
        """The provisions for ``needs``, made on first use."""
        for need in needs:
            if need not in self.made:
                self.made[need] = self._makers[need]()
        return {need: self.made[need] for need in needs}

    def _history(self) -> UpdateHistory:
        """The clients' updates kept while the outcome's model was trained."""
        if self.outcome.history is None:  # a live federation's model, say
            raise ValueError("no update history was kept while this model was trained "
                             "(`fedunlearn serve` keeps none)")
        return self.outcome.history

    def _curvature(self) -> Curvature:
        """The request's curvature statistics at the trained weights."""
        settings = self.settings.curvature
        nodes = sorted(set(self.targets.retain_nodes) | set(self.targets.forget_nodes))
        config = ConfigRecord({P.PAYLOAD: self.settings.payload,
                               P.REQUEST: self.targets.request_json})
        curvature = query_curvature(
            self.grid, nodes, ArrayRecord(self.outcome.checkpoint.final), config,
            self.outcome.evaluator.model, settings.estimator,
            min_replies=settings.min_replies,
            timeout=self.settings.train.round_timeout, limits=self.outcome.limits)
        LOG.info("curvature statistics from %d nodes (%d refused): %.2e bytes, %.1f s",
                 curvature.replies, len(curvature.refused), curvature.bytes, curvature.seconds)
        return curvature


@dataclass
class MethodRun:
    """One method's answer to one request."""

    method: str
    state: StateDict
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    cost: dict[str, float]
    refused: list[dict] = field(default_factory=list)


def run_method(grid: Grid, spec: MethodSpec, outcome: TrainOutcome,
               targets: Targets, evaluator: UnlearningEvaluator,
               provider: Provider) -> MethodRun:
    """Build the method's strategy, provide what it needs, let it run; measure the cost.

    The cost counts what the provisions cost too (the curvature statistics).
    """
    settings = outcome.settings
    strategy = make_strategy(spec, settings, targets, outcome.limits, outcome.nodes)
    provisions = provider(spec.cls.needs)
    strategy.provide({k: ((v.h, v.h_prime) if isinstance(v, Curvature) else v)
                      for k, v in provisions.items()})
    curve: list[dict[str, float]] = []

    def on_round(record: RoundRecord) -> None:
        curve.append({"round": len(curve), "phase": record.phase, "nodes": record.nodes,
                      **record.evaluation})
        progress(record)

    curve.append({})  # round 0, filled below from the run's evaluation of the perturbation
    result = strategy.run(
        grid, outcome.checkpoint.final, outcome.checkpoint.initial,
        config=ConfigRecord({P.PAYLOAD: settings.payload}), evaluate_fn=evaluator,
        timeout=settings.train.round_timeout, on_round=on_round)
    curve[0] = {"round": 0, **result.perturbed}
    records = result.records
    cm = [r.client_metrics for r in records]
    cost = {
        "bytes": sum(m.get(P.BYTES_RECEIVED, 0) + m.get(P.BYTES_SENT, 0) for m in cm),
        "flops": sum(m.get(P.FLOPS, 0) for m in cm),
        # Wall time of unlearning itself: evaluation rounds are bookkeeping, not cost.
        "seconds": result.perturb_seconds + sum(r.seconds - r.eval_seconds for r in records),
        "rounds": len(records),
    }
    cost["bytes"] += strategy.validation_bytes  # adaptive recovery's federated evaluation
    refused = [{"round": r, "node": n, "reason": why} for r, n, why in strategy.refused]
    for provision in provisions.values():
        if isinstance(provision, Curvature):
            cost["bytes"] += provision.bytes
            cost["flops"] += provision.flops
            cost["seconds"] += provision.seconds
            refused += [{"round": 0, "node": n, "reason": why} for n, why in provision.refused]
    metrics = records[-1].evaluation if records else dict(result.perturbed)
    return MethodRun(spec.label, result.arrays.to_torch_state_dict(),
                     {**metrics, **strategy.results()}, curve, cost, refused)


def progress(record: RoundRecord) -> None:
    """One progress line for an unlearning round."""
    ev = record.evaluation
    LOG.info("[%s] round %d/%d retain %.1f forget %.1f test %.1f MIA %.1f | %.1f s",
             record.phase, record.round, record.rounds, ev.get("retain", float("nan")),
             ev.get("forget", float("nan")), ev.get("test", float("nan")),
             ev.get("mia", float("nan")), record.seconds)
