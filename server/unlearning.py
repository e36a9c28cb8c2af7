"""Phase two: take forget requests into the ledger and answer each with every method.

For each pending request the server materializes the forget set, evaluates the
trained model, runs each configured method (perturbation, then its FedAvg
phases through the round driver), evaluates every round, and writes a receipt
per method to the ledger and the run folder. A request left ``running`` by a
crash resumes on restart; methods that already have a receipt are not re-run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from client.node import PAYLOAD_KEY
from fedunlearn.config import to_payload
from fedunlearn.data import ForgetSet, add_trigger, trigger_value
from fedunlearn.evaluation import add_ratios, evaluate_unlearning
from fedunlearn.federation import Federation
from fedunlearn.ledger import Ledger, digest
from fedunlearn.requests import ForgetRequest, RequestRefused, materialize
from fedunlearn.training import evaluate
from fedunlearn.unlearning.tis import reset_fraction
from server.central import CentralEvaluator
from server.curvature import Curvature, query_curvature
from server.intake import notify_deleted
from server.methods import MethodSpec, make_strategy, method_specs
from server.rounds import RoundRecord, run_rounds
from server.training import TrainOutcome
from strategies import RESET_METHODS, TargetedReset, Targets

LOG = logging.getLogger("fedunlearn")
StateDict = dict[str, torch.Tensor]


@dataclass
class EvalSets:
    """The data a request is judged on: retained, forget and test samples.

    ``target_classes`` are the classes the forget set (nearly) owns: a model that
    forgot them well loses them on the test set too, which deflates full-test NTA;
    ``test_other`` is then reported on the remaining classes as well.
    """

    retain_ids: np.ndarray
    forget_ids: np.ndarray
    backdoor: dict[str, Any] | None = None
    target_classes: list[int] = field(default_factory=list)


class UnlearningEvaluator:
    """Retain/forget/test accuracy, MIA (and backdoor metrics) of arrays, per round."""

    def __init__(self, cfg: DictConfig, federation: Federation, central: CentralEvaluator,
                 sets: EvalSets) -> None:
        train = federation.splits.train
        self.central = central
        self.retain = train.subset(sets.retain_ids)
        self.forget = train.subset(sets.forget_ids)
        self.test = federation.splits.test
        self.backdoor = sets.backdoor
        self.other = None
        if sets.target_classes:
            keep = ~np.isin(self.test.labels.numpy(), sets.target_classes)
            self.other = self.test.subset(np.flatnonzero(keep))
        self.seed = int(cfg.seed)
        self.folds = int(cfg.unlearn.evaluate.mia_folds)
        max_retain = cfg.unlearn.evaluate.max_retain
        self.max_retain = int(max_retain) if max_retain is not None else None

    def __call__(self, arrays: ArrayRecord | StateDict) -> dict[str, float]:
        """Every metric of the evaluation module, in percent."""
        model = self.central.load(arrays)
        metrics = evaluate_unlearning(
            model, retain=self.retain, forget=self.forget, test=self.test,
            batch_size=self.central.batch_size, device=self.central.device, seed=self.seed,
            folds=self.folds, max_retain=self.max_retain, backdoor=self.backdoor,
        )
        if self.other is not None:
            stats = evaluate(model, self.other.images, self.other.labels,
                             batch_size=self.central.batch_size, device=self.central.device)
            metrics["test_other"] = 100.0 * stats.accuracy
        return metrics


def eval_sets(cfg: DictConfig, federation: Federation, forget: ForgetSet) -> EvalSets:
    """Retained ids (all training ids but the forget ones), forget ids, the classes the
    forget set owns, and the backdoor setup."""
    everything = np.concatenate(federation.train_ids)
    forget_ids = forget.all_ids
    labels = federation.splits.train.labels.numpy()
    total = np.bincount(labels[everything], minlength=federation.splits.num_classes)
    held = np.bincount(labels[forget_ids], minlength=federation.splits.num_classes)
    share = float(cfg.unlearn.evaluate.owned_share)
    owned = [c for c in range(len(total)) if total[c] and held[c] >= share * total[c]]
    backdoor = None
    if forget.kind == "backdoor":
        owned = []  # poisoned samples carry the target label: it is not "owned"
        attack = cfg.attack
        # "White" as the poisoned training images had it, not the test images' maximum.
        white = trigger_value(federation.splits.train.images)
        backdoor = {"target": int(attack.target),
                    "trigger": lambda x: add_trigger(x, int(attack.size), str(attack.corner),
                                                     white)}
    return EvalSets(np.setdiff1d(everything, forget_ids), forget_ids, backdoor, owned)


@dataclass
class MethodRun:
    """One method's answer to one request."""

    method: str
    state: StateDict
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    cost: dict[str, float]
    refused: list[dict] = field(default_factory=list)


def run_method(grid: Grid, cfg: DictConfig, spec: MethodSpec, outcome: TrainOutcome,
               targets: Targets, evaluator: UnlearningEvaluator,
               curvature: Curvature | None = None) -> MethodRun:
    """Perturb the trained model as the method says, then run its phases.

    The cost counts the curvature statistics too when the method used them.
    """
    name = spec.label
    stats = (curvature.h, curvature.h_prime) if curvature is not None else None
    strategy = make_strategy(spec, cfg, targets, outcome.evaluator.model, stats,
                             outcome.limits)
    started = time.perf_counter()
    state = strategy.perturb(outcome.checkpoint.final, outcome.checkpoint.initial)
    perturb_seconds = time.perf_counter() - started
    extra: dict[str, float] = {}
    if isinstance(strategy, TargetedReset):
        extra = {"gamma": strategy.gamma, "reset_fraction": reset_fraction(strategy.mask)}
    curve = [{"round": 0, **evaluator(state)}]
    arrays = ArrayRecord(state)
    records: list[RoundRecord] = []

    def on_round(record: RoundRecord) -> None:
        records.append(record)
        curve.append({"round": len(records), "phase": record.phase, "nodes": record.nodes,
                      **record.evaluation})
        outcome_log(record)

    payload = to_payload(cfg)
    for phase in strategy.phases():
        if phase.rounds < 1 or not phase.participants:
            LOG.info("[%s] phase %s skipped (%d rounds, %d nodes)", name, phase.name,
                     phase.rounds, len(phase.participants))
            continue
        strategy.participants = list(phase.participants)
        config = ConfigRecord({PAYLOAD_KEY: payload, "phase": phase.name, **phase.order})
        arrays = run_rounds(grid, strategy, arrays, rounds=phase.rounds, config=config,
                            evaluate=evaluator, timeout=float(cfg.train.round_timeout),
                            phase=f"{name}:{phase.name}", on_round=on_round)
    cm = [r.client_metrics for r in records]
    cost = {
        "bytes": sum(m.get("bytes-received", 0) + m.get("bytes-sent", 0) for m in cm),
        "flops": sum(m.get("flops", 0) for m in cm),
        # Wall time of unlearning itself: evaluation rounds are bookkeeping, not cost.
        "seconds": perturb_seconds + sum(r.seconds - r.eval_seconds for r in records),
        "rounds": len(records),
    }
    if curvature is not None:
        cost["bytes"] += curvature.bytes
        cost["flops"] += curvature.flops
        cost["seconds"] += curvature.seconds
    final = arrays.to_torch_state_dict()
    metrics = records[-1].evaluation if records else {k: v for k, v in curve[0].items()
                                                      if k != "round"}
    refused = [{"round": r, "node": n, "reason": why} for r, n, why in strategy.refused]
    if curvature is not None:
        refused += [{"round": 0, "node": n, "reason": why} for n, why in curvature.refused]
    return MethodRun(name, final, {**metrics, **extra}, curve, cost, refused)


def outcome_log(record: RoundRecord) -> None:
    """One progress line for an unlearning round."""
    ev = record.evaluation
    LOG.info("[%s] round %d/%d retain %.1f forget %.1f test %.1f MIA %.1f | %.1f s",
             record.phase, record.round, record.rounds, ev.get("retain", float("nan")),
             ev.get("forget", float("nan")), ev.get("test", float("nan")),
             ev.get("mia", float("nan")), record.seconds)


def answer_requests(grid: Grid, cfg: DictConfig, outcome: TrainOutcome, out_dir: Path,
                    ledger: Ledger) -> tuple[list[dict], list[dict]]:
    """Answer every pending request of the ledger with every configured method.

    Returns
    -------
    rows, curves
        One row per (request, method) with final metrics and cost, and the
        per-round curves: the input of :func:`fedunlearn.evaluation.write_report`.
    """
    federation = outcome.federation
    labels = federation.splits.train.labels.numpy()
    rows: list[dict] = []
    curves: list[dict] = []
    for entry in ledger.pending():
        request = entry.request
        try:
            forget = materialize(request, federation.train_ids, labels, federation.poisoned)
        except Exception as exc:  # any request the data cannot serve is refused, not fatal
            reason = str(exc) if isinstance(exc, RequestRefused) else f"{type(exc).__name__}: {exc}"
            ledger.fail(request.request_id, reason.splitlines()[0])
            LOG.warning("request %s refused: %s", request.request_id, reason.splitlines()[0])
            continue
        ledger.start(request.request_id)
        try:
            rows_r, curves_r = _answer(grid, cfg, outcome, out_dir, ledger, request, forget)
        except Exception as exc:  # the federation keeps serving the other requests
            ledger.fail(request.request_id, f"{type(exc).__name__}: {exc}".splitlines()[0])
            LOG.exception("request %s failed", request.request_id)
            continue
        ledger.finish(request.request_id)
        notify_deleted(grid, [outcome.nodes[c] for c in forget.clients], request,
                       float(cfg.train.round_timeout))
        rows.extend(rows_r)
        curves.extend(curves_r)
    return rows, curves


def _answer(grid: Grid, cfg: DictConfig, outcome: TrainOutcome, out_dir: Path, ledger: Ledger,
            request: ForgetRequest, forget: ForgetSet) -> tuple[list[dict], list[dict]]:
    federation = outcome.federation
    nodes = outcome.nodes
    retain_clients = [c for c in range(federation.num_clients)
                      if len(np.setdiff1d(federation.train_ids[c],
                                          forget.ids_by_client.get(c, [])))]
    targets = Targets(
        retain_nodes=[nodes[c] for c in retain_clients],
        forget_nodes=[nodes[c] for c in forget.clients],
        request_json=request.to_json(),
    )
    evaluator = UnlearningEvaluator(cfg, federation, outcome.evaluator,
                                    eval_sets(cfg, federation, forget))
    before = evaluator(outcome.checkpoint.final)
    LOG.info("request %s: %d forget samples on clients %s; before: %s", request.request_id,
             len(forget.all_ids), list(forget.clients), _fmt(before))
    # A node's own request is reported under its kind, never averaged into the scenario's.
    scenario = (str(cfg.scenario.name) if request.origin == "scenario"
                else f"{request.kind} (client request)")
    base = {"scenario": scenario, "seed": int(cfg.seed), "request": request.request_id}
    rows = [{**base, "method": "Original", **before, "bytes": 0, "flops": 0, "seconds": 0.0,
             "rounds": 0}]
    curves: list[dict] = []
    done = ledger.receipts(request.request_id)
    model_dir = out_dir / "unlearned" / request.request_id
    specs = method_specs(cfg)
    curvature = None
    if any(s.name in RESET_METHODS and s.label not in done for s in specs):
        curvature = _curvature(grid, cfg, outcome, targets)
    for spec in specs:
        name = spec.label
        if name in done:
            LOG.info("request %s: %s already answered before a restart; not repeated",
                     request.request_id, name)
            receipt = done[name]
            rows.append({**base, "method": name, **receipt["metrics_after"], **receipt["cost"]})
            continue
        run = run_method(grid, cfg, spec, outcome, targets, evaluator,
                         curvature if spec.name in RESET_METHODS else None)
        model_dir.mkdir(parents=True, exist_ok=True)
        torch.save(run.state, model_dir / f"{name}.pt")
        receipt = {
            "request": json.loads(request.to_json()),
            "method": name,
            "settings": _method_settings(cfg, spec),
            "model_before": digest(outcome.checkpoint.final),
            "model_after": digest(run.state),
            "metrics_before": before,
            "metrics_after": run.metrics,
            "cost": run.cost,
            # Replies refused while answering (malformed, over-weighted, lost nodes).
            "refused_replies": run.refused,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        ledger.add_receipt(request.request_id, name, receipt)
        (model_dir / f"{name}.receipt.json").write_text(json.dumps(receipt, indent=2))
        LOG.info("request %s: %s done: %s | %.2e bytes, %.2e FLOPs, %.1f s", request.request_id,
                 name, _fmt(run.metrics), run.cost["bytes"], run.cost["flops"],
                 run.cost["seconds"])
        rows.append({**base, "method": name, **run.metrics, **run.cost})
        curves.extend({**base, "method": name, **point} for point in run.curve)
    return add_ratios(rows), curves


def _curvature(grid: Grid, cfg: DictConfig, outcome: TrainOutcome,
               targets: Targets) -> Curvature:
    """The request's curvature statistics at the trained weights (once per request)."""
    tis = cfg.unlearn.tis
    nodes = sorted(set(targets.retain_nodes) | set(targets.forget_nodes))
    config = ConfigRecord({PAYLOAD_KEY: to_payload(cfg), "request": targets.request_json})
    curvature = query_curvature(
        grid, nodes, ArrayRecord(outcome.checkpoint.final), config, outcome.evaluator.model,
        str(tis.estimator), min_replies=int(tis.min_replies),
        timeout=float(cfg.train.round_timeout), limits=outcome.limits)
    LOG.info("curvature statistics from %d nodes (%d refused): %.2e bytes, %.1f s",
             curvature.replies, len(curvature.refused), curvature.bytes, curvature.seconds)
    return curvature


def _method_settings(cfg: DictConfig, spec: MethodSpec) -> dict:
    un = OmegaConf.to_container(cfg.unlearn, resolve=True)
    assert isinstance(un, dict)
    keys = ("recovery_rounds", "retrain_rounds", "recovery_lr")
    out: dict[str, Any] = {k: un[k] for k in keys}
    section = {"NoT": "not", "GA": "ga", "GDA": "gda", "TIS": "tis",
               "RandomReset": "tis"}.get(spec.name)
    if section:
        out[section] = un[section]
    return {**out, **spec.options}


def _fmt(metrics: dict[str, float]) -> str:
    keys = ("retain", "forget", "test", "mia", "asr")
    return " ".join(f"{k} {metrics[k]:.1f}" for k in keys if k in metrics)
