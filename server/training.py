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
from fedunlearn.federation import Federation
from fedunlearn.settings import Job
from server.central import CentralEvaluator
from server.checkpoint import Checkpoint, cache_path, cached
from server.nodes import Roster, discover_partitions
from server.progress import RunLog
from strategies.fedavg import FederatedAveraging
from strategies.robust import make_aggregator

LOG = logging.getLogger("fedunlearn")


@dataclass
class TrainOutcome:
    """The trained global model, the node map, and how it was obtained.

    ``limits`` maps each node id to the training samples it holds: the most
    examples any of its replies may claim.
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


def train_global(grid: Grid, settings: Job, federation: Federation,
                 out_dir: Path) -> TrainOutcome:
    """Train the global model with FedAvg on every client, or reload it from the cache.

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
    LOG.info("federation: %d clients on nodes %s", len(nodes), list(nodes.values()))
    evaluator = CentralEvaluator(settings, federation)
    key = settings.fingerprint
    ckpt = cached(settings.cache_dir, key) if settings.reuse_trained else None
    reused = ckpt is not None
    if ckpt is not None:
        LOG.info("reusing the trained model %s (config unchanged)",
                 cache_path(settings.cache_dir, key))
    else:
        model = settings.build_model(federation, seed=settings.seed)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        strategy = FederatedAveraging(
            participants=list(nodes.values()),
            fraction_train=t.fraction_train,
            seed=settings.seed,
            limits=limits,
            aggregator=aggregator(settings),
            ranks={node: pid for pid, node in nodes.items()},
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
    }
    (out_dir / "train.json").write_text(json.dumps(summary, indent=2))
    LOG.info("global model: test accuracy %.2f%% (%s, %.1f s)", 100 * accuracy,
             "reused" if reused else "trained", seconds)
    return TrainOutcome(settings, ckpt, nodes, limits, federation, evaluator, reused, accuracy,
                        seconds)


def node_limits(roster: Roster, federation: Federation) -> dict[int, int]:
    """Per node id, the most examples its replies may claim.

    A node's reported training-set size, capped by the size its partition has in
    the config the server built the federation from: a node that over-reports at
    discovery gains nothing.
    """
    limits = {}
    for pid, node in roster.nodes.items():
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
