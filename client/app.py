"""The Flower ClientApp: local training, local evaluation, node information."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node import node_view, partition_id
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


def _load(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    model.load_state_dict(arrays.to_torch_state_dict())


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's training split."""
    view = node_view(msg, context)
    arrays = msg.content.array_records["arrays"]
    server_round = int(msg.content.config_records["config"].get("server-round", 0))
    model = view.model()
    _load(model, arrays)
    data = view.federation.client_train(view.partition_id)
    t = view.cfg.train
    started = time.perf_counter()
    stats = train_model(
        model,
        data.images,
        data.labels,
        epochs=int(t.local_epochs),
        batch_size=int(t.batch_size),
        lr=float(t.lr),
        momentum=float(t.momentum),
        weight_decay=float(t.weight_decay),
        device=view.device,
        # Different batches per client and round, the same on every repeat of the run.
        seed=int(view.cfg.seed) * 1_000_003 + server_round * 1009 + view.partition_id,
    )
    seconds = time.perf_counter() - started
    out = ArrayRecord(model.state_dict())
    metrics = MetricRecord(
        {
            "num-examples": stats.num_examples,
            "loss": stats.loss,
            "accuracy": stats.accuracy,
            "flops": stats.flops,
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
