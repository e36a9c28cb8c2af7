"""FedAvg over an explicit set of nodes, refusing malformed replies, summing costs.

The arrays of the usable replies are aggregated by a Flower strategy chosen in
the config (:mod:`strategies.robust`: FedAvg by default, or a Byzantine-robust
rule); the costs are summed over every usable reply whatever the rule.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedunlearn import protocol as P
from strategies.replies import Signature, check_metrics, check_train_reply, reply_node, signature
from strategies.rounds import EvaluateFn, OnRound, RoundRecord, TooFewReplies

LOG = logging.getLogger("fedunlearn")
#: ``observer(server_round, arrays sent, usable replies)`` (FederatedAveraging.observer).
Observer = Callable[[int, ArrayRecord, list[Message]], None]


def aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Sum the extensive metrics (costs, counts) and weight-average the others.

    Parameters
    ----------
    records : list of RecordDict
        Reply contents, each with one MetricRecord.
    weight_key : str
        The example-count metric used as the averaging weight.
    """
    metric_records = [next(iter(r.metric_records.values())) for r in records]
    total = sum(float(m[weight_key]) for m in metric_records)
    out = MetricRecord()
    for key in metric_records[0].keys():
        values = [m[key] for m in metric_records if key in m]
        if key in P.SUMMED_METRICS:
            out[key] = sum(values)
        else:
            weights = [float(m[weight_key]) for m in metric_records if key in m]
            out[key] = sum(w * float(v) for w, v in zip(weights, values, strict=True)) / total
    return out


@dataclass
class Attempt:
    """One sending of a round's messages, and what came back by the timeout.

    Attributes
    ----------
    asked : list of int
        The node ids sent a training message.
    silent : list of int
        Those without a reply by the timeout (vanished, crashed, too slow).
    refused : list of (int, str)
        Node id and reason of every refused reply.
    usable : int
        Replies that passed the checks.
    arrays, metrics : ArrayRecord and MetricRecord, or None
        The aggregate of the usable replies (None when there is none).
    """

    asked: list[int]
    silent: list[int]
    refused: list[tuple[int, str]]
    usable: int
    arrays: ArrayRecord | None
    metrics: MetricRecord | None

    def shortfall(self, phase: str, rnd: int, needed: int) -> str:
        """``"<phase> round <rnd>: <k> usable replies from <n> node(s), <m> needed"``."""
        got = ("no usable reply" if self.usable == 0
               else f"{self.usable} usable repl{'y' if self.usable == 1 else 'ies'}")
        # A robust rule (Bulyan) may itself want more replies than the round needs.
        short = (f"{needed} needed" if self.usable < needed
                 else "too few for the aggregation rule")
        return f"{phase} round {rnd}: {got} from {len(self.asked)} node(s), {short}"

    def reasons(self, timeout: float) -> str:
        """``": node 3: <why>; no reply from node(s) [4] within 60 s"``, or ``""``."""
        why = [f"node {node}: {reason}" for node, reason in self.refused[:3]]
        if self.silent:
            why.append(f"no reply from node(s) {self.silent} within {timeout:g} s")
        return ": " + "; ".join(why) if why else ""


class FederatedAveraging(FedAvg):
    """FedAvg that trains a chosen subset of nodes and refuses malformed replies.

    Parameters
    ----------
    participants : sequence of int, optional
        Node ids allowed to train; ``None`` means every connected node. Unlearning
        phases use this to leave client-wise targets out.
    fraction_train : float
        Share of the participants sampled each round (at least one).
    seed : int
        Seeds the per-round sampling, so that a run repeats exactly.
    limits : mapping of int to int, optional
        Per node id, the training samples it holds (from node discovery): a
        reply claiming more examples is refused.
    aggregator : FedAvg, optional
        The Flower strategy whose ``aggregate_train`` combines the usable
        replies' arrays (:func:`strategies.robust.make_aggregator`); default FedAvg.
    ranks : mapping of int to int, optional
        Per node id, a rank that is the same in every run (its partition id): node
        ids are drawn anew each run, so sampling and summing in node-id order would
        not repeat under the seed. Nodes without a rank go by their id.
    observer : callable, optional
        ``observer(server_round, arrays, replies)``: shown, every round, the global
        arrays sent and the usable replies (in rank order) before they are aggregated
        (training keeps FedEraser's update history with it, :mod:`server.history`).
    """

    def __init__(
        self,
        participants: Sequence[int] | None = None,
        fraction_train: float = 1.0,
        seed: int = 0,
        limits: Mapping[int, int] | None = None,
        aggregator: FedAvg | None = None,
        ranks: Mapping[int, int] | None = None,
        observer: Observer | None = None,
    ) -> None:
        # Our round driver evaluates centrally and never configures federated
        # evaluation; FedAvg warns about fraction_evaluate=0 on every construction.
        flwr_log = logging.getLogger("flwr")
        level = flwr_log.level
        flwr_log.setLevel(logging.ERROR)
        try:
            super().__init__(
                fraction_train=fraction_train,
                fraction_evaluate=0.0,
                min_train_nodes=1,
                min_available_nodes=1,
                train_metrics_aggr_fn=aggregate_metrics,
            )
        finally:
            flwr_log.setLevel(level)
        self.participants = list(participants) if participants is not None else None
        self.limits = dict(limits or {})
        self.ranks = dict(ranks or {})
        self.aggregator = aggregator
        self._sent: list[Message] = []
        self._arrays_sent = ArrayRecord()
        self.observer = observer
        self.seed = seed
        self._rng = random.Random(seed)
        self._expected: Signature = {}
        # Further ArrayRecords sent with every training message (e.g. TRIM's mask).
        self.extra_records: dict[str, ArrayRecord] = {}
        # (round, node id, reason) for every reply refused so far.
        self.refused: list[tuple[int, int, str]] = []
        self.validation_bytes = 0

    def sampling_state(self) -> tuple:
        """The state of the node sampling's generator (checkpointed with the model)."""
        return self._rng.getstate()

    def restore_sampling(self, state: tuple) -> None:
        """Continue the node sampling where :meth:`sampling_state` left it."""
        self._rng.setstate(state)

    def select_nodes(self, grid: Grid) -> list[int]:
        """The nodes that train this round: a seeded sample of the participants."""
        pool = sorted(self.participants if self.participants is not None
                      else grid.get_node_ids(), key=self._rank)
        if not pool:
            return []
        size = max(1, round(len(pool) * self.fraction_train))
        return sorted(self._rng.sample(pool, size)) if size < len(pool) else pool

    def _rank(self, node: int) -> tuple[int, int]:
        """Sort key of a node: its rank (partition), then its id."""
        return (self.ranks.get(node, node), node)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One training message per selected node, carrying the global arrays."""
        self._expected = signature(arrays)
        self._arrays_sent = arrays
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config,
                             **self.extra_records})
        # Kept to name a lost node: the SuperLink's error reply only names the message.
        self._sent = [
            Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node_id)
            for node_id in self.select_nodes(grid)
        ]
        return self._sent

    def usable_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The replies that pass the checks, in node (rank) order; the others are
        logged and recorded in :attr:`refused`.

        Parameters
        ----------
        server_round : int
            The round the replies answer (recorded with each refusal).
        replies : iterable of Message
            The round's replies to the messages of :meth:`configure_train`.
        """
        usable = []
        for msg in replies:
            node = reply_node(msg, self._sent)
            reason = check_train_reply(
                msg, self._expected, self.weighted_by_key, self.arrayrecord_key,
                limit=self.limits.get(node),
            )
            if reason is None:
                usable.append(msg)
            else:
                LOG.warning("round %d: refused reply of node %d: %s", server_round, node, reason)
                self.refused.append((server_round, node, reason))
        # In node order, not arrival order: a float sum depends on its order, and a run
        # must repeat bit for bit under its seed whichever node answers first.
        usable.sort(key=lambda m: self._rank(reply_node(m, self._sent)))
        return usable

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the usable replies (:meth:`usable_replies`), after showing them to
        the :attr:`observer`.

        Returns ``(None, None)`` when no reply is usable.
        """
        usable = self.usable_replies(server_round, replies)
        if not usable:
            return None, None
        # Costs of every usable reply, and the observer's look at them, before a robust
        # rule drops some (or pops arrays).
        metrics = self.train_metrics_aggr_fn([m.content for m in usable], self.weighted_by_key)
        if self.observer is not None:
            self.observer(server_round, self._arrays_sent, usable)
        if self.aggregator is None:
            arrays, _ = super().aggregate_train(server_round, usable)
        else:
            arrays, _ = self.aggregator.aggregate_train(server_round, usable)
        return arrays, metrics

    def run_rounds(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        *,
        rounds: int,
        config: ConfigRecord,
        evaluate_fn: EvaluateFn | None,
        timeout: float,
        phase: str,
        on_round: OnRound | None = None,
        until: Callable[[int, ArrayRecord], bool] | None = None,
        min_replies: int = 1,
        retries: int = 0,
        first: int = 1,
    ) -> ArrayRecord:
        """Run ``rounds`` rounds from ``arrays``; return the global model after the last.

        A node that does not answer within ``timeout`` (vanished, crashed) simply
        has no reply: the round aggregates the others.

        Parameters
        ----------
        grid : Grid
            Flower's grid.
        arrays : ArrayRecord
            The global model to start from.
        rounds : int
            Number of rounds.
        config : ConfigRecord
            Sent to the clients with every training message (a copy per round).
        evaluate_fn : callable, optional
            Central evaluation after each round, Flower's ``(server_round, arrays)``.
        timeout : float
            Seconds to wait for one try's replies.
        phase : str
            Name recorded with each round (``"train"``, ``"NoT:recovery"`` ...).
        on_round : callable, optional
            Receives each round's :class:`~strategies.rounds.RoundRecord`.
        until : callable, optional
            ``until(server_round, arrays)``: stop early once it is true (``rounds`` is
            then the most that run).
        min_replies : int
            Usable replies (after refusals) a round needs to replace the model.
        retries : int
            How often a round with fewer usable replies is sent again (new messages
            to a new seeded sample of the participants) before giving up.
        first : int
            The number of the first round (the ``server-round`` the nodes seed their
            batches with); a live federation that runs one round per call counts on.

        Raises
        ------
        TooFewReplies
            When a round has fewer usable replies than ``min_replies`` on every try,
            or fewer nodes to ask (the last good model is not replaced).
        """
        if min_replies < 1 or retries < 0:
            raise ValueError(f"min_replies must be at least 1 and retries at least 0, "
                             f"got {min_replies} and {retries}")
        for rnd in range(first, first + rounds):
            started = time.perf_counter()
            refused_before = len(self.refused)
            missing = 0
            for tries in range(1, retries + 2):
                attempt = self._attempt(grid, rnd, arrays, config, timeout, phase, min_replies)
                missing += len(attempt.silent)
                if attempt.arrays is not None and attempt.usable >= min_replies:
                    break
                shortfall = attempt.shortfall(phase, rnd, min_replies)
                if tries > retries:
                    after = f" after {tries} tries" if tries > 1 else ""
                    raise TooFewReplies(f"{shortfall}{after}{attempt.reasons(timeout)}")
                LOG.warning("%s: trying again (retry %d of %d)", shortfall, tries, retries)
            arrays = attempt.arrays
            eval_started = time.perf_counter()
            evaluation = evaluate_fn(rnd, arrays) if evaluate_fn else None
            finished = time.perf_counter()
            record = RoundRecord(
                phase=phase, round=rnd, rounds=rounds, nodes=len(attempt.asked),
                refused=len(self.refused) - refused_before, seconds=finished - started,
                eval_seconds=finished - eval_started, tries=tries, missing=missing,
                client_metrics={k: float(v) for k, v in (attempt.metrics or {}).items()},
                evaluation=dict(evaluation or {}),
            )
            if on_round:
                on_round(record)
            if until is not None and until(rnd, arrays):
                break
        return arrays

    def _attempt(self, grid: Grid, rnd: int, arrays: ArrayRecord, config: ConfigRecord,
                 timeout: float, phase: str, needed: int) -> Attempt:
        """Send round ``rnd``'s messages once and aggregate what came back by ``timeout``.

        Raises :class:`TooFewReplies` without sending when fewer than ``needed`` nodes
        are selected: no reply, and no retry, could make up for them.
        """
        messages = list(self.configure_train(rnd, arrays, ConfigRecord(dict(config)), grid))
        if len(messages) < needed:
            raise TooFewReplies(f"{phase} round {rnd}: {len(messages)} node(s) to train, "
                                f"{needed} needed")
        refused_before = len(self.refused)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        new_arrays, metrics = self.aggregate_train(rnd, replies)
        refused = [(node, why) for _, node, why in self.refused[refused_before:]]
        answered = {reply_node(reply, messages) for reply in replies}
        asked = [m.metadata.dst_node_id for m in messages]
        silent = [node for node in asked if node not in answered]
        if silent:
            LOG.warning("%s round %d: no reply from node(s) %s within %g s", phase, rnd,
                        silent, timeout)
        return Attempt(asked, silent, refused, len(replies) - len(refused), new_arrays,
                       metrics)

    def validate(self, grid: Grid, arrays: ArrayRecord, nodes: Sequence[int],
                 config: ConfigRecord, timeout: float) -> float | None:
        """Federated evaluation: the nodes' validation accuracy of ``arrays``.

        Each node scores the model on its own validation split (Flower's ``evaluate``
        message); the result is the mean weighted by their validation sizes, or None
        when no reply is usable (refused replies are recorded as in training).
        """
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        sent = [Message(content=record, message_type=MessageType.EVALUATE, dst_node_id=n)
                for n in nodes]
        # What validation costs on the wire: the model to every node (replies are scalars).
        self.validation_bytes += arrays.count_bytes() * len(sent)
        total = correct = 0.0
        for reply in grid.send_and_receive(sent, timeout=timeout):
            reason = check_metrics(reply, self.weighted_by_key)
            if reason is None and "accuracy" not in reply.content.metric_records[P.METRICS]:
                reason = "MetricRecord lacks 'accuracy'"
            if reason is not None:
                self.refused.append((0, reply_node(reply, sent), f"validation: {reason}"))
                continue
            metrics = reply.content.metric_records[P.METRICS]
            weight = float(metrics[self.weighted_by_key])
            total += weight
            correct += weight * float(metrics["accuracy"])
        return correct / total if total else None
