"""The federation's data as every party derives it: data set, partitions, local splits.

Server and clients call :func:`build_federation` with the same config and get the
same partitions (everything is deterministic under ``cfg.seed``), so no sample
ids ever travel over the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fedunlearn.data import DatasetSplits, ImageData, backdoor, load_dataset, poison
from fedunlearn.data.partition import partition, train_val_split
from fedunlearn.models import build_model, seeded_model


@dataclass(frozen=True)
class Federation:
    """Data set plus each client's share of it.

    Attributes
    ----------
    splits : DatasetSplits
        Train data (sample ids are its row indices) and the server's test set.
    partitions : list of numpy.ndarray
        Sample ids of each client.
    train_ids, val_ids : list of numpy.ndarray
        Each client's share split train/validation. Forget sets are drawn from
        ``train_ids``: only samples the model was trained on can be forgotten.
    poisoned : dict of int to numpy.ndarray
        Per attacking client, the training ids that carry a backdoor trigger and
        the attack's target label (already applied to ``splits.train``).
    """

    splits: DatasetSplits
    partitions: list[np.ndarray]
    train_ids: list[np.ndarray]
    val_ids: list[np.ndarray]
    poisoned: dict[int, np.ndarray]

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.partitions)

    def client_train(self, client: int) -> ImageData:
        """The training data of one client."""
        return self.splits.train.subset(self.train_ids[client])

    def client_val(self, client: int) -> ImageData:
        """The validation data of one client."""
        return self.splits.train.subset(self.val_ids[client])


def model_for(name: str, options: Mapping[str, Any], federation: Federation,
              seed: int | None = None) -> torch.nn.Module:
    """A model ``name`` (with ``options``) for this federation's data (classes, input shape).

    Parameters
    ----------
    seed : int, optional
        Build deterministically under this seed (the initial weights); ``None`` leaves
        the initialization to the caller (weights are loaded right after).
    """
    splits = federation.splits
    if seed is None:
        return build_model(name, splits.num_classes, splits.in_shape, **options)
    return seeded_model(name, splits.num_classes, splits.in_shape, seed, **options)


def build_federation(cfg: DictConfig) -> Federation:
    """Load the data set and partition it as ``cfg`` says (cached per config).

    Parameters
    ----------
    cfg : DictConfig
        A composed config (``seed``, ``num_clients``, ``dataset``, ``partition``).
    """
    key = {
        "seed": int(cfg.seed),
        "num_clients": int(cfg.num_clients),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "partition": OmegaConf.to_container(cfg.partition, resolve=True),
        "attack": OmegaConf.to_container(cfg.attack, resolve=True),
    }
    return _build(json.dumps(key, sort_keys=True))


def release_cached() -> None:
    """Drop every federation and data set this process holds in its caches.

    A launcher that hands the job to other processes (``flwr run``: the ServerApp and
    the clients load the data themselves) keeps nothing of the checks it ran: at 1,000
    clients the digits x 30 and their partitions are over a GB it would hold idle.
    """
    import gc

    from fedunlearn.data.registry import clear_cache

    _build.cache_clear()
    clear_cache()
    gc.collect()
    try:  # glibc keeps freed heap pages for reuse: hand them back to the system
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # another C library: the memory is merely reusable
        pass


@lru_cache(maxsize=4)
def _build(key_json: str) -> Federation:
    key = json.loads(key_json)
    ds, part, seed = key["dataset"], key["partition"], key["seed"]
    splits = load_dataset(
        ds["name"],
        ds["root"],
        image_size=ds["image_size"],
        download=ds["download"],
        seed=seed,
        test_fraction=ds["test_fraction"],
        hf=ds.get("hf"),
        train_copies=ds["train_copies"],
    )
    partitions = partition(
        splits.train.labels.numpy(),
        part["scheme"],
        key["num_clients"],
        seed,
        beta=part["beta"],
        min_size=part["min_size"],
        classes_per_client=part["classes_per_client"],
        shards_per_client=part["shards_per_client"],
    )
    train_ids, val_ids = [], []
    for client, ids in enumerate(partitions):
        # A distinct seed per client, so that the split does not repeat across clients.
        tr, va = train_val_split(ids, part["val_fraction"], seed * 1000 + client)
        train_ids.append(tr)
        val_ids.append(va)
    poisoned: dict[int, np.ndarray] = {}
    attack = key["attack"]
    if attack["name"] == "backdoor":
        chosen = backdoor(train_ids, splits.train.labels.numpy(), int(attack["client"]),
                          float(attack["fraction"]), int(attack["target"]), seed)
        poisoned = dict(chosen.ids_by_client)
        train = poison(splits.train, chosen.all_ids, int(attack["target"]),
                       int(attack["size"]), str(attack["corner"]))
        splits = replace(splits, train=train)
    elif attack["name"] != "none":
        raise ValueError(f"unknown attack '{attack['name']}'; known: none, backdoor")
    return Federation(splits, partitions, train_ids, val_ids, poisoned)
