"""The Flower ClientApp: local training, local evaluation, node information."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.flop_counter import FlopCounterMode

from client.modes import MODES, Local
from client.node import (
    NodeView,
    TrainOrder,
    check_own_files,
    node_outbox,
    node_view,
    partition_id,
    record_deletion,
    stored_self_check,
)
from client.pending import pending_mod
from client.timing import timing_mod
from fedunlearn import protocol as P
from fedunlearn.training import distance, pick_device, project_to_ball
from fedunlearn.training import evaluate as evaluate_model
from fedunlearn.training import train as train_model

# Every reply says where its time went on the node (bench/deployment reads it), and
# whether forget requests wait in the node's outbox (the server then polls it).
app = ClientApp(mods=[timing_mod, pending_mod])


@app.query(P.NODEINFO)
def nodeinfo(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, how many training samples it
    has (when the query carries the run's config) and where it computes.

    The server refuses any later reply that claims more examples than this. It sends
    this query first, so a node with a malformed ``data-dir`` is refused here, with
    one line (Flower gives a ClientApp no start hook).
    """
    info = ConfigRecord(
        {
            P.PARTITION_ID: partition_id(context),
            P.NUM_PARTITIONS: int(context.node_config.get(P.NUM_PARTITIONS, -1)),
            P.DEVICE: str(pick_device("auto")),
        }
    )
    if P.CONFIG in msg.content.config_records:
        view = node_view(msg, context)
        info[P.NUM_TRAIN_EXAMPLES] = len(view.train_ids)
        info[P.OWN_DATA] = int(view.own is not None)
    else:
        check_own_files(context)
    return Message(RecordDict({P.INFO: info}), reply_to=msg)


@app.query(P.REQUESTS)
def requests(msg: Message, context: Context) -> Message:
    """Hand the server the forget requests this node's users recorded (its outbox).

    The outbox is the SQLite file named by the node config's ``outbox`` (written by
    ``fedunlearn forget``); a node without one has nothing to send. A request is
    marked sent only when a later poll acknowledges it (``ack``: ids the server's
    ledger has recorded), so a server crash in between loses nothing; the ledger
    ignores repeats by request id.
    """
    found = ConfigRecord()
    with node_outbox(context) as outbox:
        if outbox is not None:
            # Lets `fedunlearn forget` refuse a request in another client's name at once.
            outbox.claim(partition_id(context))
            acked = msg.content.config_records.get(P.ACK, ConfigRecord())
            if acked:
                outbox.mark_sent([str(v) for v in acked.values()])
            for request in outbox.unsent():
                found[request.request_id] = request.to_json()
    return Message(RecordDict({P.FOUND: found}), reply_to=msg)


def _load(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    model.load_state_dict(arrays.to_torch_state_dict())


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model as the message's order says.

    Plain FedAvg rounds descend on all local training data; unlearning phases ask
    for the retained or forget part, gradient ascent, or alternating ascent and
    descent (GDA).
    """
    view = node_view(msg, context)
    config = msg.content.config_records[P.CONFIG]
    order = TrainOrder.from_config(config, view.settings.train)
    arrays = msg.content.array_records[P.ARRAYS]
    server_round = int(config.get(P.SERVER_ROUND, 0))
    model = view.model()
    _load(model, arrays)
    t = view.settings.train
    # TRIM recovery: only the entries the server marks may change (uint8 per parameter).
    mask = msg.content.array_records.get(P.MASK)
    trainable = ({k: v.bool() for k, v in mask.to_torch_state_dict().items()}
                 if mask is not None else None)
    # PGD: every step is projected back into a ball around the received model.
    project = _ball(view, model, order.radius) if order.radius > 0 else None
    fit = partial(
        train_model,
        model,
        batch_size=t.batch_size,
        lr=order.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        device=view.device,
        grad_clip=order.grad_clip,
        trainable_mask=trainable,
        after_step=project,
        # Different batches per client and round, the same on every repeat of the run.
        seed=view.settings.seed * 1_000_003 + server_round * 1009 + view.partition_id,
    )
    local = Local(
        data=lambda which: view.local_data(which, order.request),
        fit=lambda data, **kw: fit(data.images, data.labels, **kw),
        selection=order.data,
        epochs=order.epochs,
    )
    started = time.perf_counter()
    try:
        done = MODES[order.mode](local)
    except ValueError as exc:  # e.g. no data of the asked selection on this partition
        raise ValueError(f"partition {view.partition_id}: {exc}") from exc
    num_examples, stats, flops = done.num_examples, done.stats, done.flops
    seconds = time.perf_counter() - started
    out = ArrayRecord(model.state_dict())
    metrics = MetricRecord(
        {
            P.NUM_EXAMPLES: num_examples,
            "loss": stats.loss,
            "accuracy": stats.accuracy,
            P.FLOPS: flops,
            P.BYTES_RECEIVED: arrays.count_bytes(),
            P.BYTES_SENT: out.count_bytes(),
            P.TRAIN_SECONDS: seconds,
        }
    )
    return Message(RecordDict({P.ARRAYS: out, P.METRICS: metrics}), reply_to=msg)


def _ball(view: NodeView, model: torch.nn.Module,
          share: float) -> Callable[[torch.nn.Module], None]:
    """PGD's projection: within ``share`` of the distance between the received model and
    a random one of the same architecture (Halimi et al. take a third), around the
    received model."""
    center = {n: p.detach().clone() for n, p in model.named_parameters()}
    random = dict(view.settings.build_model(view.federation, seed=view.settings.seed)
                  .to(view.device).named_parameters())
    return project_to_ball(center, share * distance(center, random))


def sample_ids(count: int, size: int, seed: int) -> np.ndarray:
    """``size`` of ``range(count)``, drawn without replacement by ``seed``, sorted."""
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))


@app.query(P.CURVATURE)
def curvature(msg: Message, context: Context) -> Message:
    """Diagonal curvature of the mean loss on this node's forget and retained parts.

    Computed at the received global weights with the configured estimator
    (``unlearn.curvature``), before any forget data is deleted; a node that has already
    deleted the forget data of this request answers with an error instead.
    """
    from fedunlearn.unlearning.curvature import diagonal_curvature

    view = node_view(msg, context)
    config = msg.content.config_records[P.CONFIG]
    request = str(config[P.REQUEST])
    from fedunlearn.requests import parse_requests

    asked = {r.request_id for r in parse_requests(request)}
    if asked & {r.request_id for text in view.deleted for r in parse_requests(text)}:
        raise RuntimeError(f"partition {view.partition_id} has already deleted the forget "
                           "data of this request; its curvature cannot be computed")
    arrays = msg.content.array_records[P.ARRAYS]
    model = view.model()
    _load(model, arrays)
    settings = view.settings.curvature
    started = time.perf_counter()
    records = RecordDict()
    counts = {}
    # Count the FLOPs the estimator really runs (BackPACK's and torch.func's own
    # convolutions and products included), not an estimate.
    with FlopCounterMode(display=False) as counter:
        for part in ("forget", "retain"):
            data = view.local_data(part, request)
            counts[P.count_key(part)] = len(data)
            if part == "retain" and 0 < settings.retain_samples < len(data):
                # h_r is a mean: a seeded sample estimates it; the count stays the
                # full one, which weights this client's h_r on the server (Eq. 30).
                data = data.subset(sample_ids(len(data), settings.retain_samples,
                                              view.settings.seed + view.partition_id))
            if len(data):
                diag = diagonal_curvature(
                    model, data.images, data.labels, estimator=settings.estimator,
                    batch_size=settings.batch_size, device=view.device,
                    seed=view.settings.seed + view.partition_id,
                    mc_samples=settings.mc_samples,
                    hutchinson_samples=settings.hutchinson_samples)
                records[P.curvature_key(part)] = ArrayRecord(diag)
    sent = sum(r.count_bytes() for r in records.array_records.values())
    records[P.METRICS] = MetricRecord({
        **counts,
        P.FLOPS: int(counter.get_total_flops()),
        "curvature-seconds": time.perf_counter() - started,
        P.BYTES_RECEIVED: arrays.count_bytes(),
        P.BYTES_SENT: sent,
    })
    return Message(records, reply_to=msg)


@app.query(P.DELETE)
def delete(msg: Message, context: Context) -> Message:
    """Delete the forget data of the message's request; for the node's own request,
    check and keep the server's receipt first.

    A real deployment deletes the samples here; this node remembers the deletion in
    its state and, with an ``outbox`` in its node config, in that file, so that even a
    restarted SuperNode never trains on them again and refuses curvature queries for
    the request. With a receipt (``receipt`` and the model it names under ``arrays``),
    the node first checks that model on the samples it is about to delete
    (:func:`client.selfcheck.self_check`), stores receipt and check in its outbox, and
    replies with the check under ``self-check``. Telling a node twice changes nothing
    and gets the same reply (a restarted server tells the nodes again what its ledger
    says is deleted).
    """
    config = msg.content.config_records[P.CONFIG]
    request = str(config[P.REQUEST])
    reply = RecordDict()
    receipt = check = None
    if config.get(P.RECEIPT):
        receipt = json.loads(str(config[P.RECEIPT]))
        check = _self_check(msg, context, request, receipt)
        reply[P.SELF_CHECK] = MetricRecord(check)
    record_deletion(context, request, receipt, check)
    return Message(reply, reply_to=msg)


def _self_check(msg: Message, context: Context, request: str,
                receipt: dict[str, Any]) -> dict[str, float]:
    """The self-check already replied for this request, else a fresh one."""
    from fedunlearn.requests import ForgetRequest

    check = stored_self_check(context, ForgetRequest.from_json(request).request_id)
    if check is not None:
        return check
    from client.selfcheck import self_check

    key = context.node_config.get("server-public-key")
    return self_check(node_view(msg, context), request, receipt,
                      msg.content.array_records[P.ARRAYS], str(key) if key else None)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's validation split.

    With a request in the message (adaptive recovery), a class being forgotten is left
    out: the question is whether the retained knowledge is back, and a model that
    forgot the class well must not look unrecovered for it.
    """
    view = node_view(msg, context)
    model = view.model()
    _load(model, msg.content.array_records[P.ARRAYS])
    data = view.validation()
    config = msg.content.config_records.get(P.CONFIG, ConfigRecord())
    if config.get(P.REQUEST):
        from fedunlearn.requests import parse_requests

        classes = [r.cls for r in parse_requests(str(config[P.REQUEST])) if r.kind == "class"]
        if classes:
            keep = (~torch.isin(data.labels, torch.tensor(classes))).nonzero().flatten()
            data = data.subset(keep.numpy())
    stats = evaluate_model(
        model, data.images, data.labels,
        batch_size=view.settings.train.eval_batch_size, device=view.device,
    )
    metrics = MetricRecord(
        {P.NUM_EXAMPLES: stats.num_examples, "loss": stats.loss, "accuracy": stats.accuracy}
    )
    return Message(RecordDict({P.METRICS: metrics}), reply_to=msg)
