"""Phase one: train the global model with FedAvg (or reuse the cached one)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedunlearn import protocol as P
from fedunlearn.digest import digest
from fedunlearn.federation import Federation
from fedunlearn.settings import Job
from server.central import CentralEvaluator
from server.checkpoint import Checkpoint, cache_path, cached
from server.history import HistoryUnavailable, Recorder, UpdateHistory, history_path
from server.nodes import Roster, announce, discover_partitions
from server.progress import RunLog
from strategies.fedavg import FederatedAveraging
from strategies.robust import make_aggregator

LOG = logging.getLogger("fedunlearn")


@dataclass
class TrainOutcome:
    """The trained global model, the node map, and how it was obtained.

    ``limits`` maps each node id to the training samples it holds: the most
    examples any of its replies may claim. ``history`` holds the clients' updates kept
    during training when a planned method needs them (FedEraser), else None.
    """

    settings: Job
    checkpoint: Checkpoint
    nodes: dict[int, int]
    limits: dict[int, int]
    federation: Federation
    evaluator: CentralEvaluator
    reused: bool
    test_accuracy: float
    seconds: float
    history: UpdateHistory | None = None


def train_global(grid: Grid, settings: Job, federation: Federation,
                 out_dir: Path) -> TrainOutcome:
    """Train the global model with FedAvg on every client, or reload it from the cache.

    When a planned method needs the clients' update history (FedEraser), training keeps
    it (:mod:`server.history`), and a cached model is reused only with a history kept at
    the planned interval; otherwise it is trained again.

    Parameters
    ----------
    grid : Grid
        Flower's grid.
    settings : Job
        The job's settings.
    federation : Federation
        Who holds which samples (built from the same config).
    out_dir : Path
        The run's output folder: ``metrics.jsonl``, ``global.pt``, ``train.json``.
    """
    started = time.perf_counter()
    t = settings.train
    payload = ConfigRecord({P.PAYLOAD: settings.payload})
    roster = discover_partitions(grid, settings.num_clients, t.node_timeout, payload)
    nodes = roster.nodes
    limits = node_limits(roster, federation)
    announce(roster, time.perf_counter() - started)
    evaluator = CentralEvaluator(settings, federation)
    key = settings.fingerprint
    interval = history_interval(settings)
    ckpt, history = reusable(settings, interval) if settings.reuse_trained else (None, None)
    reused = ckpt is not None
    if ckpt is not None:
        LOG.info("reusing the trained model %s (config unchanged)",
                 cache_path(settings.cache_dir, key))
    else:
        model = settings.build_model(federation, seed=settings.seed)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ranks = {node: pid for pid, node in nodes.items()}
        history = (UpdateHistory.create(history_path(settings.cache_dir, key), interval)
                   if interval is not None else None)
        strategy = FederatedAveraging(
            participants=list(nodes.values()),
            fraction_train=t.fraction_train,
            seed=settings.seed,
            limits=limits,
            aggregator=aggregator(settings),
            ranks=ranks,
            observer=Recorder(history, ranks) if history is not None else None,
        )
        run_log = RunLog(out_dir)
        final = strategy.run_rounds(
            grid,
            ArrayRecord(initial),
            rounds=t.rounds,
            config=ConfigRecord({P.PAYLOAD: settings.payload, P.PHASE: "train"}),
            evaluate_fn=evaluator,
            timeout=t.round_timeout,
            phase="train",
            on_round=run_log,
        )
        ckpt = Checkpoint(
            fingerprint=key,
            initial=initial,
            final=final.to_torch_state_dict(),
            history=[r.as_dict() for r in run_log.records],
            config=dict(settings.training_view),
            refused=[{"round": r, "node": n, "reason": why} for r, n, why in strategy.refused],
        )
        if history is not None:  # whole now, and tied to this model
            history.seal(digest(ckpt.final))
        # Saved either way, for inspection; cached() reuses only a clean run's model.
        ckpt.save(cache_path(settings.cache_dir, key))
        if ckpt.refused:
            LOG.warning("training refused %d replies: the model is not reused from the cache",
                        len(ckpt.refused))
    ckpt.save(out_dir / "global.pt")
    accuracy = float(evaluator(0, ArrayRecord(ckpt.final))["test_accuracy"])
    seconds = time.perf_counter() - started
    summary = {
        "fingerprint": key,
        "reused": reused,
        "rounds": t.rounds,
        "test_accuracy": accuracy,
        "seconds": seconds,
        "nodes": {str(k): v for k, v in nodes.items()},
        "aggregation": t.aggregation,
        "refused": ckpt.refused,
        "history": ckpt.history,
        "update_history": history.summary() if history is not None else None,
    }
    (out_dir / "train.json").write_text(json.dumps(summary, indent=2))
    LOG.info("global model: test accuracy %.2f%% (%s, %.1f s)", 100 * accuracy,
             "reused" if reused else "trained", seconds)
    return TrainOutcome(settings, ckpt, nodes, limits, federation, evaluator, reused, accuracy,
                        seconds, history)


def history_interval(settings: Job) -> int | None:
    """The interval of the update history the planned methods need (the ``interval``
    setting of each method whose ``needs`` name ``"history"``), or None if none does.

    Raises
    ------
    ValueError
        Two such methods want different intervals.
    """
    from server.methods import plan  # server.methods imports this module

    intervals = {spec.options["interval"] for spec in plan(settings)
                 if "history" in spec.cls.needs}
    if len(intervals) > 1:
        raise ValueError(f"the methods that need the update history keep it every "
                         f"{sorted(intervals)} rounds; they must agree")
    return intervals.pop() if intervals else None


def reusable(settings: Job, interval: int | None
             ) -> tuple[Checkpoint | None, UpdateHistory | None]:
    """The cached trained model and, when ``interval`` is not None, its update history.

    ``(None, None)`` when there is no clean cached model, or when a history is needed
    and the cached one does not fit it (kept without one, at another interval, or
    interrupted): the model is then trained again, with the reason in the log, rather
    than unlearned without the history a method needs.
    """
    key = settings.fingerprint
    ckpt = cached(settings.cache_dir, key)
    if ckpt is None or interval is None:
        return ckpt, None
    try:
        history = UpdateHistory.open(history_path(settings.cache_dir, key), interval,
                                     digest(ckpt.final))
    except HistoryUnavailable as exc:
        LOG.warning("training again rather than reusing %s: %s",
                    cache_path(settings.cache_dir, key), exc)
        return None, None
    return ckpt, history


def node_limits(roster: Roster, federation: Federation) -> dict[int, int]:
    """Per node id, the most examples its replies may claim.

    A node's reported training-set size, capped by the size its partition has in
    the config the server built the federation from: a node that over-reports at
    discovery gains nothing. A node on its own files (``roster.own``) has no size in
    the config: its size as reported at discovery stands, and no later reply may
    claim more.
    """
    limits = {}
    for pid, node in roster.nodes.items():
        if pid in roster.own and pid in roster.sizes:
            limits[node] = roster.sizes[pid]
            continue
        derived = len(federation.train_ids[pid])
        reported = roster.sizes.get(pid, derived)
        if reported != derived:
            LOG.warning("node %d (partition %d) reports %d training samples; the config "
                        "gives %d: using the smaller", node, pid, reported, derived)
        limits[node] = min(reported, derived)
    return limits


def aggregator(settings: Job) -> FedAvg:
    """The aggregation rule of ``train.aggregation`` (:func:`strategies.robust.make_aggregator`)."""
    return make_aggregator(settings.train.aggregation, **settings.train.aggregation_options)
