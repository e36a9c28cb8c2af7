"""``fedunlearn serve``: a live federation that trains and forgets on request.

Every round the server first takes requests in: the ones ``serve.schedule`` plans
for that round and the ones the nodes' users recorded (``query.requests``). Each
pending request is answered in turn by ``serve.method`` from the current global
model; the answer's model becomes the global model, its receipt is sealed into
the ledger, and the nodes holding the forget data delete it (they never train on
it again; a client forgotten whole gets no further message). Then one FedAvg
round runs. Requests that arrive during an answer wait for the next round.

After every round the global model, the pre-training weights and the round are
checkpointed atomically (``serve-state.pt``); ``serve.json`` lists each request
with the rounds it was recorded and answered in.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from fedunlearn.digest import digest
from fedunlearn.federation import Federation
from fedunlearn.ledger import Ledger
from fedunlearn.requests import ForgetRequest, materialize, scenario_request
from fedunlearn.settings import Job
from server.answers import answer_requests
from server.central import CentralEvaluator
from server.checkpoint import Checkpoint
from server.forgetting import ledger_path, signing_key
from server.intake import notify_deleted, take_requests
from server.nodes import discover_partitions
from server.progress import RunLog
from server.training import TrainOutcome, aggregator, node_limits
from strategies.fedavg import FederatedAveraging
from strategies.rounds import RoundRecord

LOG = logging.getLogger("fedunlearn")
STATE = "serve-state.pt"


def planned(settings: Job) -> dict[int, list[ForgetRequest]]:
    """``serve.schedule`` as requests by round (made once: their ids are random)."""
    plan: dict[int, list[ForgetRequest]] = {}
    for rnd, content in settings.serve_schedule:
        plan.setdefault(rnd, []).append(scenario_request({"seed": settings.seed, **content}))
    return plan


def serve(grid: Grid, settings: Job, federation: Federation, out_dir: Path) -> TrainOutcome:
    """Train for ``serve.rounds`` rounds, answering forget requests as they come.

    Returns
    -------
    TrainOutcome
        The served global model at the end (its checkpoint's ``final``).
    """
    started = time.perf_counter()
    t = settings.train
    roster = discover_partitions(grid, settings.num_clients, t.node_timeout,
                                 ConfigRecord({P.PAYLOAD: settings.payload}))
    active = dict(roster.nodes)  # partition -> node; a client forgotten whole leaves it
    limits = node_limits(roster, federation)
    evaluator = CentralEvaluator(settings, federation)
    state_path = out_dir / STATE
    history: list[dict] = []
    served: list[dict] = []
    if settings.serve_resume and state_path.exists():
        state = Checkpoint.load(state_path)
        initial, arrays, history = state.initial, ArrayRecord(state.final), state.history
        summary = out_dir / "serve.json"
        served = json.loads(summary.read_text())["answered"] if summary.exists() else []
        LOG.info("[serve] resuming after round %d from %s", len(history), state_path)
    else:
        model = settings.build_model(federation, seed=settings.seed)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        arrays = ArrayRecord(initial)
    strategy = FederatedAveraging(participants=list(active.values()),
                                  fraction_train=t.fraction_train, seed=settings.seed,
                                  limits=limits, aggregator=aggregator(settings),
                                  ranks={node: pid for pid, node in roster.nodes.items()})
    # The answers use the serving method alone.
    answerer = replace(settings, methods=(settings.serve_method,))
    schedule = planned(settings)
    run_log = RunLog(out_dir)
    path = ledger_path(settings, out_dir)
    key = signing_key(settings, path)
    first_seen: dict[str, int] = {}
    done_rounds = len(history)

    def save(arrays: ArrayRecord) -> None:
        """Checkpoint the served model and the rounds so far, and the answers (atomic)."""
        Checkpoint(settings.fingerprint, initial, arrays.to_torch_state_dict(), history,
                   dict(settings.training_view),
                   [{"round": r, "node": n, "reason": why} for r, n, why in
                    strategy.refused]).save(state_path)
        tmp = out_dir / "serve.json.tmp"
        tmp.write_text(json.dumps({"rounds": settings.serve_rounds,
                                   "method": settings.serve_method, "answered": served},
                                  indent=2))
        tmp.replace(out_dir / "serve.json")
    with Ledger(path) as ledger:
        # After a restart: clients forgotten whole stay out, and every node is told again
        # what the ledger says it deleted (a restarted node forgot it; it must not train
        # on those samples again).
        labels = federation.splits.train.labels.numpy()
        for entry in ledger.all():
            if entry.state != "done":
                continue
            request = entry.request
            forget = materialize(request, federation.train_ids, labels, federation.poisoned)
            notify_deleted(grid, [active[c] for c in forget.clients if c in active], request,
                           t.round_timeout)
            if request.kind == "client":
                active.pop(request.client, None)
        for rnd in range(done_rounds + 1, settings.serve_rounds + 1):
            take_requests(grid, active, ledger, t.round_timeout, schedule.get(rnd, []))
            for pending in ledger.pending():
                first_seen.setdefault(pending.request.request_id, rnd)
            for entry in ledger.pending():
                outcome = _outcome(answerer, federation, initial, arrays, active, limits,
                                   evaluator)
                answers = answer_requests(grid, outcome, out_dir, ledger, key, [entry])
                request = entry.request
                if request.request_id not in answers.served:
                    continue  # refused or failed: in the ledger with its reason
                arrays = ArrayRecord(answers.served[request.request_id])
                if request.kind == "client":
                    active.pop(request.client, None)
                served.append({"request": request.request_id, "kind": request.kind,
                               "client": request.client,
                               "taken_in_round": first_seen.get(request.request_id, rnd),
                               "answered_in_round": rnd,
                               "served_model": digest(arrays.to_torch_state_dict())})
                LOG.info("[serve] round %d: request %s answered by %s; its model is served",
                         rnd, request.request_id, settings.serve_method)
                # Kept at once: a restart serves the model the receipt names.
                save(arrays)
            strategy.participants = list(active.values())

            def numbered(record: RoundRecord, rnd: int = rnd) -> None:
                record.round, record.rounds = rnd, settings.serve_rounds
                history.append(record.as_dict())
                run_log(record)

            arrays = strategy.run_rounds(
                grid, arrays, rounds=1,
                config=ConfigRecord({P.PAYLOAD: settings.payload, P.PHASE: "serve"}),
                evaluate_fn=evaluator, timeout=t.round_timeout, phase="serve",
                on_round=numbered)
            save(arrays)
    accuracy = float(evaluator(0, arrays)["test_accuracy"])
    seconds = time.perf_counter() - started
    (out_dir / "serve.json").write_text(json.dumps({
        "rounds": settings.serve_rounds, "method": settings.serve_method,
        "test_accuracy": accuracy, "seconds": seconds, "answered": served,
        "nodes": {str(k): v for k, v in roster.nodes.items()},
        "active_at_end": sorted(active)}, indent=2))
    LOG.info("served %d rounds, answered %d requests; test accuracy %.2f%%",
             settings.serve_rounds, len(served), 100 * accuracy)
    final = _outcome(settings, federation, initial, arrays, active, limits, evaluator)
    return replace(final, test_accuracy=accuracy, seconds=seconds)


def _outcome(settings: Job, federation: Federation, initial: dict, arrays: ArrayRecord,
             active: dict[int, int], limits: dict[int, int],
             evaluator: CentralEvaluator) -> TrainOutcome:
    """The current global model as the answers see it: a trained model to start from."""
    ckpt = Checkpoint(settings.fingerprint, initial, arrays.to_torch_state_dict(), [],
                      dict(settings.training_view))
    return TrainOutcome(settings, ckpt, dict(active), limits, federation, evaluator,
                        reused=False, test_accuracy=float("nan"), seconds=0.0)
