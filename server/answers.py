"""Answer the ledger's pending requests: every configured method, one receipt each.

For each pending request the server materializes the forget set, evaluates the
trained model, lets each configured method run (:func:`server.methods.run_method`),
and writes a receipt per method to the ledger and the run folder: request,
settings, model digests before and after, metrics, cost, refused replies, and the
requests that shared the pass (a live federation answers the requests of one
round in one pass over their union). A request left ``running`` by a crash
resumes on restart; methods that already have a receipt are not re-run. The
caller tells the nodes holding forget data to delete it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from fedunlearn.data import ForgetSet, union
from fedunlearn.digest import digest
from fedunlearn.evaluation import add_ratios
from fedunlearn.ledger import Ledger, LedgerEntry
from fedunlearn.requests import ForgetRequest, RequestRefused, materialize, requests_json
from fedunlearn.settings import Job
from fedunlearn.sqlite import now
from server.evaluation import UnlearningEvaluator, eval_sets
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
    adopts); ``forget`` to its own forget set (whose nodes delete it); ``passes`` lists
    the request ids answered together, pass by pass.
    """

    rows: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    served: dict[str, StateDict] = field(default_factory=dict)
    forget: dict[str, ForgetSet] = field(default_factory=dict)
    passes: list[list[str]] = field(default_factory=list)


def answer_requests(grid: Grid, outcome: TrainOutcome, out_dir: Path, ledger: Ledger,
                    key: Ed25519PrivateKey | None = None,
                    entries: list[LedgerEntry] | None = None,
                    together: bool = False) -> Answers:
    """Answer pending requests of the ledger (all, or ``entries``) with every configured
    method, each from ``outcome.checkpoint.final``.

    With ``together``, the requests are answered in one pass over the union of their
    forget sets, and each receipt names the requests that shared it; otherwise one pass
    per request. A request already answered before a restart (it has its receipts) is
    not re-run. The caller tells the nodes to delete (``Answers.forget``).
    """
    federation = outcome.federation
    labels = federation.splits.train.labels.numpy()
    answers = Answers()
    entries = ledger.pending() if entries is None else entries
    fresh = [e for e in entries if not ledger.receipts(e.request.request_id)]
    # Requests a crashed pass already answered are finished on their own (their model
    # is on disk); the rest form one pass, or one each.
    groups = [[e] for e in entries if e not in fresh]
    groups += [fresh] if together and fresh else [[e] for e in fresh]
    for group in groups:
        requests, sets = [], []
        for entry in group:
            request = entry.request
            try:
                sets.append(materialize(request, federation.train_ids, labels,
                                        federation.poisoned))
                requests.append(request)
            except Exception as exc:  # a request the data cannot serve is refused, not fatal
                reason = (str(exc) if isinstance(exc, RequestRefused)
                          else f"{type(exc).__name__}: {exc}")
                ledger.fail(request.request_id, reason.splitlines()[0])
                LOG.warning("request %s refused: %s", request.request_id,
                            reason.splitlines()[0])
        if not requests:
            continue
        ids = [r.request_id for r in requests]
        for request_id in ids:
            ledger.start(request_id)
        try:
            rows_r, curves_r, state = _answer(grid, outcome, out_dir, ledger, requests,
                                              union(sets), key)
        except Exception as exc:  # the federation keeps serving the other requests
            for request_id in ids:
                ledger.fail(request_id, f"{type(exc).__name__}: {exc}".splitlines()[0])
            LOG.exception("requests %s failed", ", ".join(ids))
            continue
        for request, forget in zip(requests, sets, strict=True):
            ledger.finish(request.request_id)
            answers.served[request.request_id] = state
            answers.forget[request.request_id] = forget
        answers.rows.extend(rows_r)
        answers.curves.extend(curves_r)
        answers.passes.append(ids)
    return answers


def _answer(grid: Grid, outcome: TrainOutcome, out_dir: Path, ledger: Ledger,
            requests: list[ForgetRequest], forget: ForgetSet,
            key: Ed25519PrivateKey | None) -> tuple[list[dict], list[dict], StateDict]:
    """One pass: every method over the union ``forget`` of ``requests``."""
    federation = outcome.federation
    nodes = outcome.nodes  # a live federation leaves out the clients it forgot whole
    retain_clients = [c for c in range(federation.num_clients)
                      if c in nodes and len(np.setdiff1d(federation.train_ids[c],
                                                         forget.ids_by_client.get(c, [])))]
    targets = Targets(
        retain_nodes=[nodes[c] for c in retain_clients],
        forget_nodes=[nodes[c] for c in forget.clients if c in nodes],
        request_json=requests_json(requests),
    )
    job = outcome.settings
    evaluator = UnlearningEvaluator(job, federation, outcome.evaluator,
                                    eval_sets(job, federation, forget))
    before = dict(evaluator(0, ArrayRecord(outcome.checkpoint.final)))
    ids = [r.request_id for r in requests]
    label = ids[0] if len(ids) == 1 else f"{ids[0]} (+{len(ids) - 1} in one pass)"
    LOG.info("request %s: %d forget samples on clients %s; before: %s", label,
             len(forget.all_ids), list(forget.clients), _fmt(before))
    first = requests[0]
    # A node's own request is reported under its kind, never averaged into the scenario's.
    scenario = (job.scenario if first.origin == "scenario"
                else f"{forget.kind} (client request)")
    base = {"scenario": scenario, "seed": job.seed, "request": ",".join(ids)}
    rows = [{**base, "method": "Original", **before, "bytes": 0, "flops": 0, "seconds": 0.0,
             "rounds": 0}]
    curves: list[dict] = []
    done = ledger.receipts(first.request_id)
    model_dirs = [out_dir / "unlearned" / request_id for request_id in ids]
    provider = Provider(grid, outcome, targets)
    state = outcome.checkpoint.final
    for spec in plan(job):
        name = spec.label
        if name in done:
            LOG.info("request %s: %s already answered before a restart; not repeated",
                     label, name)
            receipt = done[name]
            rows.append({**base, "method": name, **receipt["metrics_after"], **receipt["cost"]})
            state = torch.load(model_dirs[0] / f"{name}.pt", weights_only=True)
            continue
        run = run_method(grid, spec, outcome, targets, evaluator, provider)
        state = run.state
        # The model is on disk before its receipts exist: a receipt always names a
        # model a restarted server can adopt.
        for model_dir in model_dirs:
            model_dir.mkdir(parents=True, exist_ok=True)
            torch.save(run.state, model_dir / f"{name}.pt")
        common = {
            "method": name,
            "settings": settings(job, spec),
            "model_before": digest(outcome.checkpoint.final),
            "model_after": digest(run.state),
            "metrics_before": before,
            "metrics_after": run.metrics,
            "cost": run.cost,
            # The requests answered by this one pass (their union was forgotten).
            "shared_pass": ids,
            # Replies refused while answering (malformed, over-weighted, lost nodes).
            "refused_replies": run.refused,
            "finished": now(),  # ISO to the millisecond, as the ledger's times
        }
        # Sealed in the ledger together: chained to the receipt before, signed.
        sealed = ledger.add_receipts(
            [(r.request_id, name, {"request": json.loads(r.to_json()), **common})
             for r in requests], key)
        for model_dir, receipt in zip(model_dirs, sealed, strict=True):
            (model_dir / f"{name}.receipt.json").write_text(json.dumps(receipt, indent=2))
        LOG.info("request %s: %s done: %s | %.2e bytes, %.2e FLOPs, %.1f s", label,
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
