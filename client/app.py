"""The Flower ClientApp: local training, local evaluation, node information."""

from __future__ import annotations

import time
from functools import partial

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node import TrainOrder, node_view, partition_id
from fedunlearn.training import evaluate as evaluate_model
from fedunlearn.training import pick_device
from fedunlearn.training import train as train_model

app = ClientApp()


@app.query("nodeinfo")
def nodeinfo(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds and where it computes."""
    info = ConfigRecord(
        {
            "partition-id": partition_id(context),
            "num-partitions": int(context.node_config.get("num-partitions", -1)),
            "device": str(pick_device("auto")),
        }
    )
    return Message(RecordDict({"info": info}), reply_to=msg)


@app.query("requests")
def requests(msg: Message, context: Context) -> Message:
    """Hand the server the forget requests this node's users recorded (its outbox).

    The outbox is the SQLite file named by the node config's ``outbox`` (written by
    ``fedunlearn forget``); a node without one has nothing to send. A request is
    marked sent only when a later poll acknowledges it (``ack``: ids the server's
    ledger has recorded), so a server crash in between loses nothing; the ledger
    ignores repeats by request id.
    """
    found = ConfigRecord()
    path = context.node_config.get("outbox")
    if path:
        from fedunlearn.outbox import Outbox

        outbox = Outbox(str(path))
        acked = msg.content.config_records.get("ack", ConfigRecord())
        if acked:
            outbox.mark_sent([str(v) for v in acked.values()])
        for request in outbox.unsent():
            found[request.request_id] = request.to_json()
    return Message(RecordDict({"requests": found}), reply_to=msg)


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
    config = msg.content.config_records["config"]
    order = TrainOrder.from_config(config, view.cfg)
    arrays = msg.content.array_records["arrays"]
    server_round = int(config.get("server-round", 0))
    model = view.model()
    _load(model, arrays)
    t = view.cfg.train
    fit = partial(
        train_model,
        model,
        batch_size=int(t.batch_size),
        lr=order.lr,
        momentum=float(t.momentum),
        weight_decay=float(t.weight_decay),
        device=view.device,
        grad_clip=order.grad_clip,
        # Different batches per client and round, the same on every repeat of the run.
        seed=int(view.cfg.seed) * 1_000_003 + server_round * 1009 + view.partition_id,
    )
    started = time.perf_counter()
    if order.mode == "gda":
        forget = view.local_data("forget", order.request)
        retain = view.local_data("retain", order.request)
        steps = []
        for _ in range(order.epochs):
            if len(forget):
                steps.append(fit(forget.images, forget.labels, epochs=1, ascent=True))
            if len(retain):
                steps.append(fit(retain.images, retain.labels, epochs=1))
        if not steps:
            raise ValueError("no local data for gda")
        num_examples = len(forget) + len(retain)
        stats = steps[-1]
        flops = sum(s.flops for s in steps)
    else:
        data = view.local_data(order.data, order.request)
        if not len(data):
            raise ValueError(f"no local '{order.data}' data on partition {view.partition_id}")
        stats = fit(data.images, data.labels, epochs=order.epochs, ascent=order.mode == "ascent")
        num_examples, flops = stats.num_examples, stats.flops
    seconds = time.perf_counter() - started
    out = ArrayRecord(model.state_dict())
    metrics = MetricRecord(
        {
            "num-examples": num_examples,
            "loss": stats.loss,
            "accuracy": stats.accuracy,
            "flops": flops,
            "bytes-received": arrays.count_bytes(),
            "bytes-sent": out.count_bytes(),
            "train-seconds": seconds,
        }
    )
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's validation split."""
    view = node_view(msg, context)
    model = view.model()
    _load(model, msg.content.array_records["arrays"])
    data = view.federation.client_val(view.partition_id)
    stats = evaluate_model(
        model, data.images, data.labels,
        batch_size=int(view.cfg.train.eval_batch_size), device=view.device,
    )
    metrics = MetricRecord(
        {"num-examples": stats.num_examples, "loss": stats.loss, "accuracy": stats.accuracy}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
