"""``fedunlearn serve``: a live federation that trains and forgets on request.

Every round the server first looks for nodes that (re)joined, re-sends the deletion
notices and receipts no node confirmed yet, and takes requests in: the ones
``serve.schedule`` plans for that round and the ones the nodes' users recorded
(``query.requests``). The pending requests are answered by ``serve.method`` from
the current global model, in one pass over their union (``serve.one_pass``) or one
pass each; the answer's model becomes the global model, its receipts are sealed
into the ledger, and then (only after the model is adopted) the nodes holding the
forget data are told to delete it and the requesting node gets its receipt
(:mod:`server.delivery`). A client forgotten whole gets no further training
message. Then one FedAvg round runs; one that hears from fewer than
``serve.min_nodes`` nodes within ``serve.round_timeout`` is retried. Requests that
arrive during an answer wait for the next round.

After every round and every adoption the global model, the pre-training weights,
the round and the adopted requests are checkpointed atomically
(``serve-state.pt``); ``serve.json`` lists each answered request with its rounds,
times, cost and metrics. A restart (``serve.resume``) continues after the last
complete round and first adopts any answer whose receipt was sealed but whose model
the checkpoint does not hold yet: no request is answered twice and every receipt
names a model the federation served.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from fedunlearn.digest import digest
from fedunlearn.errors import UserError
from fedunlearn.federation import Federation
from fedunlearn.ledger import Ledger, LedgerEntry
from fedunlearn.requests import ForgetRequest, scenario_request
from fedunlearn.settings import Job
from server.answers import answer_requests
from server.central import CentralEvaluator
from server.checkpoint import Checkpoint
from server.delivery import deliver, model_path
from server.forgetting import ledger_path, signing_key
from server.intake import poll_targets, take_requests
from server.nodes import Roster, announce, discover_partitions, refresh
from server.progress import RunLog
from server.training import TrainOutcome, aggregator, node_limits
from strategies.fedavg import FederatedAveraging
from strategies.rounds import RoundError, RoundRecord

LOG = logging.getLogger("fedunlearn")
STATE = "serve-state.pt"
SUMMARY = "serve.json"


class ServeError(UserError):
    """A live federation that cannot start as asked (one line)."""


def planned(settings: Job) -> dict[int, list[ForgetRequest]]:
    """``serve.schedule`` as requests by round (made once: their ids are random)."""
    plan: dict[int, list[ForgetRequest]] = {}
    for rnd, content in settings.serve_schedule:
        plan.setdefault(rnd, []).append(scenario_request({"seed": settings.seed, **content}))
    return plan


class LiveFederation:
    """The serving state of ``fedunlearn serve``: model, nodes, answers, checkpoint.

    Parameters
    ----------
    grid : Grid
    settings : Job
    federation : Federation
    out_dir : Path
        The run folder: checkpoint, ``serve.json``, answers' models and receipts.
    """

    def __init__(self, grid: Grid, settings: Job, federation: Federation,
                 out_dir: Path) -> None:
        self.grid, self.settings, self.federation, self.out_dir = (grid, settings,
                                                                  federation, out_dir)
        self.timeout = settings.serve_round_timeout
        config = ConfigRecord({P.PAYLOAD: settings.payload})
        started = time.perf_counter()
        self.roster: Roster = discover_partitions(grid, settings.num_clients,
                                                  settings.train.node_timeout, config)
        announce(self.roster, time.perf_counter() - started)
        self.limits = node_limits(self.roster, federation)
        self.evaluator = CentralEvaluator(settings, federation)
        self.state_path = out_dir / STATE
        self.history: list[dict] = []
        self.served: list[dict] = []
        self.adopted: list[str] = []
        self.forgotten: set[int] = set()  # clients forgotten whole: never trained again
        # Partitions told to delete something that did not confirm it (yet): they may
        # still hold forget data, so they train no round until they confirm.
        self.unsure: set[int] = set()
        self.first_seen: dict[str, int] = {}
        if self.state_path.exists() and not settings.serve_resume:
            raise ServeError(f"{out_dir} already holds a live federation ({STATE}); "
                             f"continue it with `fedunlearn serve --resume {out_dir}` or "
                             "choose another run folder")
        if settings.serve_resume and self.state_path.exists():
            state = Checkpoint.load(self.state_path)
            self.initial, self.history, self.adopted = state.initial, state.history, \
                state.adopted
            sampling = state.sampling
            self.arrays = ArrayRecord(state.final)
            summary = out_dir / SUMMARY
            if summary.exists():
                self.served = json.loads(summary.read_text())["answered"]
            LOG.info("[serve] resuming after round %d from %s", len(self.history),
                     self.state_path)
        else:
            model = settings.build_model(federation, seed=settings.seed)
            self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.arrays = ArrayRecord(self.initial)
            sampling = None
        self.strategy = FederatedAveraging(
            participants=list(self.active.values()), fraction_train=settings.train.fraction_train,
            seed=settings.seed, limits=self.limits, aggregator=aggregator(settings),
            ranks=self._ranks())
        if sampling is not None:  # the same nodes are sampled as without the restart
            self.strategy.restore_sampling(sampling)
        # Answers use the serving method alone, and the serving round timeout.
        self.answerer = replace(settings, methods=(settings.serve_method,),
                                train=replace(settings.train, round_timeout=self.timeout))

    # ---- who takes part ----------------------------------------------------------
    @property
    def active(self) -> dict[int, int]:
        """Partition -> node of the clients that still take part (polls, answers)."""
        return {p: n for p, n in self.roster.nodes.items() if p not in self.forgotten}

    def tell(self, ledger: Ledger, nodes: dict[int, int] | None = None,
             requests: list[ForgetRequest] | None = None, again: bool = False) -> None:
        """:func:`server.delivery.deliver` (every node by default), keeping track of the
        partitions that have not confirmed a deletion."""
        done = deliver(self.grid, ledger, self.roster.nodes if nodes is None else nodes,
                       self.settings, self.federation, self.out_dir, self.timeout,
                       requests, again=again)
        self.unsure = (self.unsure - done.confirmed) | done.failed
        if done.failed:
            LOG.warning("[serve] client(s) %s train no round until they confirm their "
                        "deletions", sorted(self.unsure))

    def _ranks(self) -> dict[int, int]:
        return {node: pid for pid, node in self.roster.nodes.items()}

    def rejoin(self, ledger: Ledger) -> None:
        """Take in nodes that (re)connected since the last round (a restarted SuperNode
        has a new node id): they take part again from this round on, after being told
        again what their partition deleted."""
        before = dict(self.roster.nodes)
        self.roster = refresh(self.grid, self.roster, self.settings.num_clients,
                              self.timeout, ConfigRecord({P.PAYLOAD: self.settings.payload}))
        if self.roster.nodes == before:
            return
        self.limits = node_limits(self.roster, self.federation)
        self.strategy.limits = self.limits
        self.strategy.ranks = self._ranks()
        back = {p: n for p, n in self.roster.nodes.items() if before.get(p) != n}
        self.tell(ledger, back, again=True)

    # ---- answers -----------------------------------------------------------------
    def answer(self, ledger: Ledger, key: object, rnd: int) -> None:
        """Answer the ledger's pending requests; adopt each pass's model at once."""
        pending = ledger.pending()
        for entry in pending:
            self.first_seen.setdefault(entry.request.request_id, rnd)
        groups = [pending] if self.settings.serve_one_pass else [[e] for e in pending]
        for group in groups:
            if not group:
                continue
            answers = answer_requests(self.grid, self._outcome(self.answerer), self.out_dir,
                                      ledger, key, group, together=True)
            for ids in answers.passes:
                entries = [ledger.get(i) for i in ids]
                self.adopt(ledger, entries, answers.served[ids[0]], rnd)

    def adopt(self, ledger: Ledger, entries: list[LedgerEntry], state: dict, rnd: int) -> None:
        """Serve an answer's model, checkpoint that, then tell the nodes (deletion
        notices, the receipts): a receipt reaches a node only for an adopted model."""
        self.arrays = ArrayRecord(state)
        served = digest(state)
        for entry in entries:
            request = entry.request
            self.adopted.append(request.request_id)
            if request.kind == "client":
                self.forgotten.add(request.client)
            receipt = list(ledger.receipts(request.request_id).values())[-1]
            self.served.append(_answered(entry, receipt, served,
                                         self.first_seen.get(request.request_id, rnd), rnd))
            LOG.info("[serve] round %d: request %s answered by %s%s; its model is served",
                     rnd, request.request_id, receipt["method"],
                     f" (one pass with {len(entries) - 1} more)" if len(entries) > 1 else "")
        self.save()
        self.tell(ledger, requests=[e.request for e in entries])

    def adopt_sealed(self, ledger: Ledger) -> None:
        """After a crash: adopt, in chain order, answers whose receipts were sealed but
        whose models the checkpoint does not include yet."""
        for entry in ledger.all():
            request = entry.request
            receipts = ledger.receipts(request.request_id)
            if request.kind == "client" and entry.state == "done":
                self.forgotten.add(request.client)
            if not receipts or request.request_id in self.adopted:
                continue
            if entry.state == "running":  # receipts sealed, crash before it was finished
                ledger.finish(request.request_id)
            method = list(receipts)[-1]
            state = torch.load(model_path(self.out_dir, request.request_id, method),
                               weights_only=True)
            LOG.info("[serve] adopting the answer to %s sealed before the restart",
                     request.request_id)
            self.adopt(ledger, [ledger.get(request.request_id)], state, len(self.history))

    # ---- rounds --------------------------------------------------------------------
    def train_round(self, rnd: int, run_log: RunLog) -> None:
        """One FedAvg round over the active nodes (retried when too few answer)."""
        self.strategy.participants = [n for p, n in self.active.items() if p not in self.unsure]

        def numbered(record: RoundRecord) -> None:
            record.round, record.rounds = rnd, self.settings.serve_rounds
            self.history.append(record.as_dict())
            run_log(record)

        try:
            self.arrays = self.strategy.run_rounds(
                self.grid, self.arrays, rounds=1,
                config=ConfigRecord({P.PAYLOAD: self.settings.payload, P.PHASE: "serve"}),
                evaluate_fn=self.evaluator, timeout=self.timeout, phase="serve",
                on_round=numbered, min_replies=self.settings.serve_min_nodes,
                retries=self.settings.serve_round_retries, first=rnd)
        except RoundError as exc:  # the federation outlives a round without enough nodes
            LOG.error("[serve] round %d skipped: %s", rnd, exc)
            self.history.append({"phase": "serve", "round": rnd, "skipped": str(exc)})
        self.save()
        if self.settings.serve_snapshots:
            path = self.out_dir / "rounds" / f"{rnd:04d}.pt"
            path.parent.mkdir(exist_ok=True)
            torch.save(self.arrays.to_torch_state_dict(), path)

    def save(self) -> None:
        """Checkpoint the served model, the rounds and the adopted requests (atomic),
        then ``serve.json``."""
        Checkpoint(self.settings.fingerprint, self.initial, self.arrays.to_torch_state_dict(),
                   self.history, dict(self.settings.training_view),
                   [{"round": r, "node": n, "reason": why}
                    for r, n, why in self.strategy.refused],
                   list(self.adopted), self.strategy.sampling_state()).save(self.state_path)
        self.summary()

    def summary(self, **extra: object) -> None:
        """Write ``serve.json`` (atomic)."""
        tmp = self.out_dir / (SUMMARY + ".tmp")
        tmp.write_text(json.dumps({"rounds": self.settings.serve_rounds,
                                   "method": self.settings.serve_method,
                                   "one_pass": self.settings.serve_one_pass,
                                   "answered": self.served, **extra}, indent=2))
        tmp.replace(self.out_dir / SUMMARY)

    def _outcome(self, settings: Job) -> TrainOutcome:
        """The current global model as the answers see it: a trained model to start from."""
        ckpt = Checkpoint(settings.fingerprint, self.initial, self.arrays.to_torch_state_dict(),
                          [], dict(settings.training_view))
        return TrainOutcome(settings, ckpt, dict(self.active), self.limits, self.federation,
                            self.evaluator, reused=False, test_accuracy=float("nan"),
                            seconds=0.0)


def serve(grid: Grid, settings: Job, federation: Federation, out_dir: Path) -> TrainOutcome:
    """Train for ``serve.rounds`` rounds, answering forget requests as they come.

    Returns
    -------
    TrainOutcome
        The served global model at the end.
    """
    started = time.perf_counter()
    live = LiveFederation(grid, settings, federation, out_dir)
    schedule = planned(settings)
    run_log = RunLog(out_dir)
    path = ledger_path(settings, out_dir)
    key = signing_key(settings, path)
    per_round = settings.serve_poll_per_round
    if per_round is not None and per_round < len(live.active):
        LOG.info("[serve] request polls: nodes that say requests wait, plus %d of %d nodes "
                 "a round (each asked at least every %d rounds)", per_round, len(live.active),
                 -(-len(live.active) // per_round))
    intake: list[dict] = []  # per round: nodes asked for requests, seconds it took
    with Ledger(path) as ledger:
        resumed = len(live.history)
        live.adopt_sealed(ledger)
        if resumed:
            # Nodes that restarted without durable state are told again what they deleted.
            live.tell(ledger, again=True)
        for rnd in range(resumed + 1, settings.serve_rounds + 1):
            live.rejoin(ledger)
            if live.unsure:  # their last notice failed: again, whatever the ledger says
                live.tell(ledger, {p: live.roster.nodes[p] for p in live.unsure}, again=True)
            live.tell(ledger)
            polled = poll_targets(live.active, rnd, settings.serve_poll_per_round,
                                  getattr(grid, "pending", set()))
            taking = time.perf_counter()
            take_requests(grid, polled, ledger, live.timeout, schedule.get(rnd, []))
            intake.append({"round": rnd, "nodes_polled": len(polled),
                           "seconds": time.perf_counter() - taking})
            live.answer(ledger, key, rnd)
            live.train_round(rnd, run_log)
    accuracy = float(live.evaluator(0, live.arrays)["test_accuracy"])
    seconds = time.perf_counter() - started
    live.summary(test_accuracy=accuracy, seconds=seconds, request_polls=intake,
                 nodes={str(k): v for k, v in live.roster.nodes.items()},
                 active_at_end=sorted(live.active))
    LOG.info("served %d rounds, answered %d requests; test accuracy %.2f%%",
             settings.serve_rounds, len(live.served), 100 * accuracy)
    return replace(live._outcome(settings), test_accuracy=accuracy, seconds=seconds)


def _answered(entry: LedgerEntry, receipt: dict, served: str, taken: int, rnd: int) -> dict:
    """One line of ``serve.json``: a request, when it came and was answered, its cost."""
    recorded = _seconds(entry.created)
    finished = _seconds(receipt["finished"])
    return {"request": entry.request.request_id, "kind": entry.request.kind,
            "client": entry.request.client, "sender": entry.sender,
            "taken_in_round": taken, "answered_in_round": rnd,
            "recorded": entry.created, "receipt_finished": receipt["finished"],
            "seconds_to_receipt": (finished - recorded
                                   if recorded is not None and finished is not None else None),
            "shared_pass": receipt.get("shared_pass", [entry.request.request_id]),
            "method": receipt["method"], "cost": receipt["cost"],
            "metrics_before": receipt["metrics_before"],
            "metrics_after": receipt["metrics_after"], "served_model": served}


def _seconds(stamp: str) -> float | None:
    """POSIX seconds of an ISO time (the ledger's or a receipt's), None if unreadable."""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None
