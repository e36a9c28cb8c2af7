"""Answer the ledger's pending requests: every configured method, one receipt each.

For each pending request the server materializes the forget set, evaluates the
trained model, lets each configured method run (:func:`server.methods.run_method`),
and writes a receipt per method to the ledger and the run folder: request,
settings, model digests before and after, metrics, cost, refused replies. A
request left ``running`` by a crash resumes on restart; methods that already
have a receipt are not re-run. Nodes holding forget data are told to delete it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from fedunlearn.data import ForgetSet
from fedunlearn.digest import digest
from fedunlearn.evaluation import add_ratios
from fedunlearn.ledger import Ledger, LedgerEntry
from fedunlearn.requests import ForgetRequest, RequestRefused, materialize
from fedunlearn.settings import Job
from server.evaluation import UnlearningEvaluator, eval_sets
from server.intake import notify_deleted
from server.methods import MethodSpec, Provider, plan, recovery, run_method
from server.training import TrainOutcome
from strategies import Targets

LOG = logging.getLogger("fedunlearn")
StateDict = dict[str, torch.Tensor]


@dataclass
class Answers:
    """What answering the pending requests produced.

    ``rows`` (one per request and method, final metrics and cost) and ``curves`` (per
    round) are the input of :func:`fedunlearn.evaluation.write_report`; ``served`` maps
    each answered request to the model of its last method (the one a live federation
    adopts).
    """

    rows: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    served: dict[str, StateDict] = field(default_factory=dict)


def answer_requests(grid: Grid, outcome: TrainOutcome, out_dir: Path, ledger: Ledger,
                    key: Ed25519PrivateKey | None = None,
                    entries: list[LedgerEntry] | None = None) -> Answers:
    """Answer pending requests of the ledger (all, or ``entries``) with every configured
    method, each from ``outcome.checkpoint.final``."""
    federation = outcome.federation
    labels = federation.splits.train.labels.numpy()
    answers = Answers()
    for entry in ledger.pending() if entries is None else entries:
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
            rows_r, curves_r, state = _answer(grid, outcome, out_dir, ledger, request, forget,
                                              key)
        except Exception as exc:  # the federation keeps serving the other requests
            ledger.fail(request.request_id, f"{type(exc).__name__}: {exc}".splitlines()[0])
            LOG.exception("request %s failed", request.request_id)
            continue
        ledger.finish(request.request_id)
        notify_deleted(grid, [outcome.nodes[c] for c in forget.clients if c in outcome.nodes],
                       request, outcome.settings.train.round_timeout)
        answers.rows.extend(rows_r)
        answers.curves.extend(curves_r)
        answers.served[request.request_id] = state
    return answers


def _answer(grid: Grid, outcome: TrainOutcome, out_dir: Path, ledger: Ledger,
            request: ForgetRequest, forget: ForgetSet,
            key: Ed25519PrivateKey | None) -> tuple[list[dict], list[dict], StateDict]:
    federation = outcome.federation
    nodes = outcome.nodes  # a live federation leaves out the clients it forgot whole
    retain_clients = [c for c in range(federation.num_clients)
                      if c in nodes and len(np.setdiff1d(federation.train_ids[c],
                                                         forget.ids_by_client.get(c, [])))]
    targets = Targets(
        retain_nodes=[nodes[c] for c in retain_clients],
        forget_nodes=[nodes[c] for c in forget.clients if c in nodes],
        request_json=request.to_json(),
    )
    job = outcome.settings
    evaluator = UnlearningEvaluator(job, federation, outcome.evaluator,
                                    eval_sets(job, federation, forget))
    before = dict(evaluator(0, ArrayRecord(outcome.checkpoint.final)))
    LOG.info("request %s: %d forget samples on clients %s; before: %s", request.request_id,
             len(forget.all_ids), list(forget.clients), _fmt(before))
    # A node's own request is reported under its kind, never averaged into the scenario's.
    scenario = (job.scenario if request.origin == "scenario"
                else f"{request.kind} (client request)")
    base = {"scenario": scenario, "seed": job.seed, "request": request.request_id}
    rows = [{**base, "method": "Original", **before, "bytes": 0, "flops": 0, "seconds": 0.0,
             "rounds": 0}]
    curves: list[dict] = []
    done = ledger.receipts(request.request_id)
    model_dir = out_dir / "unlearned" / request.request_id
    provider = Provider(grid, outcome, targets)
    state = outcome.checkpoint.final
    for spec in plan(job):
        name = spec.label
        if name in done:
            LOG.info("request %s: %s already answered before a restart; not repeated",
                     request.request_id, name)
            receipt = done[name]
            rows.append({**base, "method": name, **receipt["metrics_after"], **receipt["cost"]})
            state = torch.load(model_dir / f"{name}.pt", weights_only=True)
            continue
        run = run_method(grid, spec, outcome, targets, evaluator, provider)
        state = run.state
        model_dir.mkdir(parents=True, exist_ok=True)
        torch.save(run.state, model_dir / f"{name}.pt")
        receipt = {
            "request": json.loads(request.to_json()),
            "method": name,
            "settings": settings(job, spec),
            "model_before": digest(outcome.checkpoint.final),
            "model_after": digest(run.state),
            "metrics_before": before,
            "metrics_after": run.metrics,
            "cost": run.cost,
            # Replies refused while answering (malformed, over-weighted, lost nodes).
            "refused_replies": run.refused,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # Sealed in the ledger: chained to the receipt before it, signed by the server.
        receipt = ledger.add_receipt(request.request_id, name, receipt, key)
        (model_dir / f"{name}.receipt.json").write_text(json.dumps(receipt, indent=2))
        LOG.info("request %s: %s done: %s | %.2e bytes, %.2e FLOPs, %.1f s", request.request_id,
                 name, _fmt(run.metrics), run.cost["bytes"], run.cost["flops"],
                 run.cost["seconds"])
        rows.append({**base, "method": name, **run.metrics, **run.cost})
        curves.extend({**base, "method": name, **point} for point in run.curve)
    return add_ratios(rows), curves, state


def settings(job: Job, spec: MethodSpec) -> dict[str, Any]:
    """A receipt's settings: what every method shares, the method's options, and the
    curvature settings when it used the clients' statistics."""
    out: dict[str, Any] = asdict(recovery(job))
    if "curvature" in spec.cls.needs:
        out["curvature"] = asdict(job.curvature)
    return {**out, **spec.options}


def _fmt(metrics: dict[str, float]) -> str:
    keys = ("retain", "forget", "test", "mia", "asr")
    return " ".join(f"{k} {metrics[k]:.1f}" for k in keys if k in metrics)
