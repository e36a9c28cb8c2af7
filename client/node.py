"""What a client node knows: its partition, its device, its local data and model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import Context, Message
from omegaconf import DictConfig

from fedunlearn.config import ConfigError, from_payload
from fedunlearn.federation import Federation, build_federation
from fedunlearn.models import build_model
from fedunlearn.training import pick_device

# Key of the ConfigRecord entry that carries the composed config (JSON).
PAYLOAD_KEY = "fedunlearn"


@dataclass(frozen=True)
class NodeView:
    """One client's view of the run: config, partition id, data and device."""

    cfg: DictConfig
    partition_id: int
    federation: Federation
    device: torch.device

    def model(self) -> torch.nn.Module:
        """A fresh model of the configured architecture on this node's device."""
        splits = self.federation.splits
        options = dict(self.cfg.model.options or {})
        return build_model(
            self.cfg.model.name, splits.num_classes, splits.in_shape, **options
        ).to(self.device)


def partition_id(context: Context, num_clients: int | None = None) -> int:
    """This node's ``partition-id`` from its node config, checked against the run.

    Raises
    ------
    ConfigError
        When the node config lacks it or it does not fit ``num_clients``.
    """
    if "partition-id" not in context.node_config:
        raise ConfigError("node config lacks 'partition-id' (start the SuperNode with "
                          "--node-config \"partition-id=K num-partitions=N\")")
    pid = int(context.node_config["partition-id"])
    if num_clients is not None and not 0 <= pid < num_clients:
        raise ConfigError(f"partition-id {pid} is outside the run's {num_clients} clients")
    return pid


def node_view(msg: Message, context: Context) -> NodeView:
    """Rebuild this node's view from the config the server sent with ``msg``."""
    config = msg.content.config_records.get("config")
    if config is None or PAYLOAD_KEY not in config:
        raise ConfigError(f"message carries no config '{PAYLOAD_KEY}'")
    cfg = from_payload(str(config[PAYLOAD_KEY]))
    pid = partition_id(context, int(cfg.num_clients))
    return NodeView(cfg, pid, build_federation(cfg), pick_device(cfg.runtime.device))
