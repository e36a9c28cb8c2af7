"""What a client node knows: its partition, its device, its local data and model, and
which requests' forget data it has deleted (its state, and its outbox when it has one).

Its local data are its demo partition of the run's data set, or, with ``data-dir`` in
its node config, its own files (:mod:`fedunlearn.data.nodefiles`); ``partition-id``
names the client either way (requests name clients by it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message

from fedunlearn import protocol as P
from fedunlearn.config import ConfigError, from_payload
from fedunlearn.data import ImageData
from fedunlearn.data.nodefiles import (
    NodeData,
    load_node_data,
    node_split,
    own_forget_ids,
    read_node_files,
)
from fedunlearn.federation import Federation, build_federation
from fedunlearn.outbox import Outbox
from fedunlearn.requests import ForgetRequest, parse_requests
from fedunlearn.settings import Job, Training

# The node config key naming the node's own data folder.
DATA_DIR = "data-dir"


@dataclass(frozen=True)
class NodeView:
    """One client's view of the run: its settings, partition id, data and device."""

    settings: Job
    partition_id: int
    federation: Federation
    device: torch.device
    # Requests (JSON) whose forget data this node has deleted: never trained on again.
    deleted: tuple[str, ...] = ()
    # The node's own files (node config ``data-dir``); None: its demo partition.
    own: NodeData | None = None

    def model(self) -> torch.nn.Module:
        """A fresh model of the configured architecture on this node's device."""
        return self.settings.build_model(self.federation).to(self.device)

    @property
    def train_ids(self) -> np.ndarray:
        """This node's training ids: of its own files, or of its partition."""
        if self.own is not None:
            return self.own.train_ids
        return self.federation.train_ids[self.partition_id]

    def validation(self) -> ImageData:
        """This node's validation data: its own files' split, or its partition's."""
        if self.own is not None:
            return self.own.validation()
        return self.federation.client_val(self.partition_id)

    def forget_ids(self, request_json: str) -> np.ndarray:
        """This client's training ids that ``request_json`` asks to forget (maybe none)."""
        if not request_json:
            return np.empty(0, dtype=np.int64)
        if self.own is not None:
            return own_forget_ids(parse_requests(request_json), self.partition_id,
                                  self.own.train_ids, self.own.data.labels.numpy())
        return _forget_ids(self.federation, request_json, self.partition_id)

    def local_data(self, which: str, request_json: str = "") -> ImageData:
        """This client's training data: ``all``, ``retain`` (all but the forget ids) or
        ``forget`` (the forget ids only), without the samples of requests it deleted."""
        ids = self.train_ids
        for gone in self.deleted:
            ids = np.setdiff1d(ids, self.forget_ids(gone))
        if which == "all":
            chosen = ids
        elif which in P.DATA_SELECTIONS:
            forget = self.forget_ids(request_json)
            chosen = np.setdiff1d(ids, forget) if which == "retain" else forget
        else:
            raise ConfigError(f"unknown data selection '{which}'; known: all, retain, forget")
        samples = self.own.data if self.own is not None else self.federation.splits.train
        return samples.subset(chosen)


def _forget_ids(federation: Federation, request_json: str, client: int) -> np.ndarray:
    # Materializing is a few numpy set operations: cheap enough to redo per message.
    # A pass over several requests at once sends them as a list: their union is forgotten.
    from fedunlearn.requests import materialize_all, parse_requests

    forget = materialize_all(parse_requests(request_json), federation.train_ids,
                             federation.splits.train.labels.numpy(), federation.poisoned)
    return forget.ids_by_client.get(client, np.empty(0, dtype=np.int64))


@dataclass(frozen=True)
class TrainOrder:
    """What the server asks of one training message (keys of its ConfigRecord).

    ``data``: all, retain or forget; ``mode``: a client behaviour registered in
    :mod:`client.modes` (descent, ascent, gda, ...).
    """

    data: str
    mode: str
    lr: float
    epochs: int
    grad_clip: float | None
    request: str
    # PGD's ball, as a share of the distance to a random model (0: none).
    radius: float = 0.0

    @classmethod
    def from_config(cls, config: ConfigRecord, train: Training) -> TrainOrder:
        """Read the order, defaulting to plain FedAvg training (``train``)."""
        from client.modes import MODES

        mode = str(config.get(P.MODE, "descent"))
        if mode not in MODES:
            raise ConfigError(f"unknown training mode '{mode}'; known: {', '.join(MODES)}")
        data = str(config.get(P.DATA, "all"))
        if data not in P.DATA_SELECTIONS:
            raise ConfigError(f"unknown data selection '{data}'; known: "
                              f"{', '.join(P.DATA_SELECTIONS)}")
        clip = float(config.get(P.GRAD_CLIP, 0.0))
        return cls(
            data=data,
            mode=mode,
            lr=float(config.get(P.LR, train.lr)),
            epochs=int(config.get(P.EPOCHS, train.local_epochs)),
            grad_clip=clip if clip > 0 else None,
            request=str(config.get(P.REQUEST, "")),
            radius=float(config.get(P.RADIUS, 0.0)),
        )


def partition_id(context: Context, num_clients: int | None = None) -> int:
    """This node's ``partition-id`` from its node config, checked against the run.

    Raises
    ------
    ConfigError
        When the node config lacks it or it does not fit ``num_clients``.
    """
    if P.PARTITION_ID not in context.node_config:
        raise ConfigError("node config lacks 'partition-id' (start the SuperNode with "
                          "--node-config \"partition-id=K num-partitions=N\")")
    pid = int(context.node_config[P.PARTITION_ID])
    if num_clients is not None and not 0 <= pid < num_clients:
        raise ConfigError(f"partition-id {pid} is outside the run's {num_clients} clients")
    return pid


def node_view(msg: Message, context: Context) -> NodeView:
    """Rebuild this node's view from the config the server sent with ``msg``."""
    config = msg.content.config_records.get(P.CONFIG)
    if config is None or P.PAYLOAD not in config:
        raise ConfigError(f"message carries no config '{P.PAYLOAD}'")
    # The node's edge: the config the server sent, read once into typed settings.
    cfg = from_payload(str(config[P.PAYLOAD]))
    settings = Job.from_config(cfg)
    pid = partition_id(context, settings.num_clients)
    federation = build_federation(cfg)
    own = None
    if DATA_DIR in context.node_config:
        # Checked against the run here: its classes, input shape and normalization.
        own = load_node_data(str(context.node_config[DATA_DIR]), federation.splits,
                             cfg.dataset.get("image_size"))
    return NodeView(settings, pid, federation, settings.torch_device(),
                    deleted_requests(context), own)


def check_own_files(context: Context) -> None:
    """Check the node's own data folder, if it has one, before any run config is known:
    its format and its kept split (classes and shape are checked by :func:`node_view`).

    Raises
    ------
    NodeDataError
        A malformed folder or a changed data set (one line).
    """
    if DATA_DIR in context.node_config:
        node_split(read_node_files(str(context.node_config[DATA_DIR])))


# ---- what the node deleted: its state, and its outbox file when it has one -----------
# The state lives as long as the SuperNode process (all a simulated node has); the
# outbox survives a restart, so a deployed node never trains on deleted samples again.


@contextmanager
def node_outbox(context: Context) -> Iterator[Outbox | None]:
    """The outbox file the node config names (``outbox``), open; None without one."""
    path = context.node_config.get("outbox")
    if not path:
        yield None
        return
    with Outbox(str(path)) as outbox:
        yield outbox


def deleted_requests(context: Context) -> tuple[str, ...]:
    """Requests (JSON) whose forget data this node deleted: its state's and its outbox's."""
    found = [str(v) for v in _state(context, P.DELETED).values()]
    with node_outbox(context) as outbox:
        if outbox is not None:
            found += outbox.deleted()
    return tuple(dict.fromkeys(found))


def stored_self_check(context: Context, request_id: str) -> dict[str, float] | None:
    """The self-check this node already replied with for ``request_id``; None if none."""
    with node_outbox(context) as outbox:
        if outbox is not None and (check := outbox.self_check(request_id)) is not None:
            return check
    text = _state(context, P.SELF_CHECK).get(request_id)
    return None if text is None else json.loads(str(text))


def record_deletion(context: Context, request_json: str, receipt: dict[str, Any] | None = None,
                    self_check: dict[str, float] | None = None) -> None:
    """Remember that this node deleted ``request_json``'s forget data (and, for its own
    request, the receipt with its self-check). Recording again changes nothing.

    Raises
    ------
    OutboxError
        The outbox holds another receipt, or another request under the same id.
    """
    request_id = ForgetRequest.from_json(request_json).request_id
    with node_outbox(context) as outbox:
        if outbox is not None:
            # The receipt first: a crash before the deletion is recorded leaves a node
            # that replies with the stored self-check when told again, not one that
            # checks a receipt on samples it no longer holds.
            if receipt is not None and self_check is not None:
                outbox.store_receipt(request_id, receipt, self_check)
            outbox.record_deleted(request_json)
    if self_check is not None:
        checks = _state(context, P.SELF_CHECK)
        checks.setdefault(request_id, json.dumps(self_check, sort_keys=True))
        context.state[P.SELF_CHECK] = checks
    deleted = _state(context, P.DELETED)
    if request_json not in deleted.values():
        deleted[str(len(deleted))] = request_json
    context.state[P.DELETED] = deleted


def _state(context: Context, key: str) -> ConfigRecord:
    return context.state.config_records.get(key, ConfigRecord())
