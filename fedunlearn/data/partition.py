"""Split a training set's sample ids over federated clients, with Flower Datasets.

The schemes are ``flwr-datasets`` partitioners, the ones Flower's users know
(:class:`~flwr_datasets.partitioner.IidPartitioner`,
:class:`~flwr_datasets.partitioner.DirichletPartitioner` with its minimum partition
size, :class:`~flwr_datasets.partitioner.PathologicalPartitioner`,
:class:`~flwr_datasets.partitioner.ShardPartitioner`), plus the TIS paper's
preferential split written as a :class:`~flwr_datasets.partitioner.Partitioner` of its
own (:mod:`fedunlearn.data.preferential`). They run on a small ``datasets.Dataset`` of
``(label, id)`` rows, shuffled under the seed first as ``FederatedDataset`` does, so
every scheme returns one sorted int64 array of sample ids (row indices into the
training set) per client, deterministically under ``seed``.

The ``iid``, ``dirichlet`` and ``preferential`` partitions are disjoint and cover every
sample. ``pathological`` and ``shard`` are disjoint but may leave samples out, as their
definitions do (a class needed by no client; the last incomplete shard).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # imported when partitioning: flwr_datasets loads matplotlib (~2 s)
    from flwr_datasets.partitioner import Partitioner

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "preferential", "pathological", "shard")

# DirichletPartitioner redraws until every partition holds min_partition_size samples,
# at most this many times, then raises (flwr-datasets 0.6's fixed limit).
DIRICHLET_ATTEMPTS = 10


def _as_labels(labels: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0):
        raise ValueError("labels must be non-negative integers")
    return array.astype(np.int64, copy=False)


def _check_clients(num_samples: int, num_clients: int) -> None:
    if num_clients < 1 or num_clients > num_samples:
        raise ValueError(
            f"num_clients must be between 1 and the number of samples ({num_samples}), "
            f"got {num_clients}"
        )


def owned_classes(num_classes: int, num_clients: int) -> dict[int, int]:
    """Which class each client owns exclusively in the preferential scheme.

    Client ``i`` owns class ``num_classes // 2 + i`` for
    ``i < num_classes - num_classes // 2``; later clients own none. With 10
    classes and 5 clients: client 0 owns class 5, ..., client 4 owns class 9.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    num_clients : int
        Number of clients.

    Returns
    -------
    dict of int to int
        ``client -> owned class``, only for clients that own one.
    """
    first_owned = num_classes // 2
    return {i: first_owned + i for i in range(min(num_clients, num_classes - first_owned))}


def make_partitioner(
    scheme: str,
    num_clients: int,
    *,
    seed: int = 0,
    beta: float | None = None,
    min_size: int = 10,
    classes_per_client: int = 2,
    shards_per_client: int = 2,
) -> Partitioner:
    """The Flower Datasets partitioner of a scheme, over a ``label`` column.

    Parameters
    ----------
    scheme : str
        One of :data:`SCHEMES`.
    num_clients : int
        Number of partitions.
    seed : int
        Seed of the partitioner's draws.
    beta : float, optional
        Dirichlet concentration (``alpha`` in Flower Datasets); required for
        ``"dirichlet"``, ignored otherwise.
    min_size : int
        Dirichlet: fewest samples a client may get (``min_partition_size``).
    classes_per_client : int
        Pathological: classes per client (the first dealt round-robin, so that every
        class is used when there are at least as many clients as classes).
    shards_per_client : int
        Shard (McMahan et al. 2017): label-sorted shards per client.

    Returns
    -------
    flwr_datasets.partitioner.Partitioner
        A partitioner without a dataset yet.
    """
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    from fedunlearn.data.preferential import PreferentialPartitioner

    makers: dict[str, Callable[[], Partitioner]] = {
        "iid": lambda: IidPartitioner(num_clients),
        "dirichlet": lambda: DirichletPartitioner(
            num_clients, "label", alpha=_need_beta(beta), min_partition_size=min_size,
            self_balancing=False, shuffle=True, seed=seed),
        "preferential": lambda: PreferentialPartitioner(num_clients, "label", seed=seed),
        "pathological": lambda: PathologicalPartitioner(
            num_clients, "label", num_classes_per_partition=classes_per_client,
            class_assignment_mode="first-deterministic", shuffle=True, seed=seed),
        "shard": lambda: ShardPartitioner(
            num_clients, "label", num_shards_per_partition=shards_per_client,
            shuffle=True, seed=seed),
    }
    if scheme not in makers:
        raise ValueError(f"unknown partition scheme '{scheme}'; known: {', '.join(SCHEMES)}")
    return makers[scheme]()


def partition_ids(labels: npt.ArrayLike, partitioner: Partitioner, seed: int = 0
                  ) -> list[np.ndarray]:
    """Run ``partitioner`` over the labels and return each partition's sample ids.

    Parameters
    ----------
    labels : array_like of int
        Label of every training sample.
    partitioner : flwr_datasets.partitioner.Partitioner
        A partitioner without a dataset; it partitions by the ``label`` column.
    seed : int
        Seed of the shuffle before partitioning (``FederatedDataset``'s step).

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 ids per partition.
    """
    from datasets import Dataset

    y = _as_labels(labels)
    rows = Dataset.from_dict({"label": y, "id": np.arange(len(y), dtype=np.int64)})
    partitioner.dataset = rows.shuffle(seed=seed)
    return [np.sort(np.asarray(partitioner.load_partition(i)["id"], dtype=np.int64))
            for i in range(partitioner.num_partitions)]


def partition(
    labels: npt.ArrayLike,
    scheme: str,
    num_clients: int,
    seed: int = 0,
    beta: float | None = None,
    **options: int,
) -> list[np.ndarray]:
    """Partition by scheme name (:data:`SCHEMES`) with Flower Datasets.

    Parameters
    ----------
    labels : array_like of int
        Label of every training sample.
    scheme : str
        One of :data:`SCHEMES`.
    num_clients : int
        Number of clients, ``1 <= num_clients <= len(labels)``.
    seed : int
        Seed of the shuffle and of the scheme.
    beta : float, optional
        Dirichlet concentration; required for ``"dirichlet"``, ignored otherwise
        (so one config can carry it for every scheme).
    **options
        ``min_size``, ``classes_per_client``, ``shards_per_client``
        (:func:`make_partitioner`).

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 ids per client.

    Raises
    ------
    ValueError
        A bad scheme or option, or a Dirichlet minimum no draw could meet, in one line.
    """
    y = _as_labels(labels)
    _check_clients(len(y), num_clients)
    min_size = int(options.get("min_size", 10))
    if scheme == "dirichlet":
        if not _need_beta(beta) > 0:
            raise ValueError(f"dirichlet partition needs beta > 0, got {beta}")
        if min_size * num_clients > len(y):
            raise ValueError(f"cannot give each of {num_clients} clients min_size={min_size} "
                             f"samples out of {len(y)}")
    partitioner = make_partitioner(scheme, num_clients, seed=seed, beta=beta, **options)
    try:
        with warnings.catch_warnings():
            # Each redraw warns; failing them all raises, which is what a user needs.
            warnings.filterwarnings("ignore", message="The specified min_partition_size")
            return partition_ids(y, partitioner, seed)
    except ValueError as error:
        if scheme == "dirichlet" and "max number of attempts" in str(error):
            raise ValueError(
                f"dirichlet partition: no draw in {DIRICHLET_ATTEMPTS} gave each of "
                f"{num_clients} clients >= {min_size} samples at beta={beta}; raise beta or "
                f"lower min_size") from None
        raise ValueError(f"{scheme} partition: {' '.join(str(error).split())}") from None


def iid(labels: npt.ArrayLike, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Equal shares of the shuffled samples (:func:`partition` with ``"iid"``)."""
    return partition(labels, "iid", num_clients, seed)


def dirichlet(labels: npt.ArrayLike, num_clients: int, beta: float, seed: int = 0,
              min_size: int = 10) -> list[np.ndarray]:
    """Label skew: per-class Dirichlet(beta) proportions over clients, every client with
    at least ``min_size`` samples (:func:`partition` with ``"dirichlet"``)."""
    return partition(labels, "dirichlet", num_clients, seed, beta=beta, min_size=min_size)


def preferential(labels: npt.ArrayLike, num_clients: int, seed: int = 0,
                 num_classes: int | None = None) -> list[np.ndarray]:
    """The TIS paper's preferential split (:mod:`fedunlearn.data.preferential`)."""
    from fedunlearn.data.preferential import PreferentialPartitioner

    y = _as_labels(labels)
    _check_clients(len(y), num_clients)
    return partition_ids(y, PreferentialPartitioner(num_clients, num_classes=num_classes,
                                                    seed=seed), seed)


def _need_beta(beta: float | None) -> float:
    if beta is None:
        raise ValueError("dirichlet partition needs beta > 0, got None")
    return float(beta)


def train_val_split(
    ids: npt.ArrayLike, val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's ids into train and validation parts.

    Parameters
    ----------
    ids : array_like of int
        The client's sample ids (non-empty).
    val_fraction : float
        Share for validation, in ``[0, 1)``; rounded to whole samples, while at
        least one sample always stays for training.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    tuple of numpy.ndarray
        ``(train_ids, val_ids)``, each sorted int64.
    """
    array = np.asarray(ids, dtype=np.int64).reshape(-1)
    if array.size == 0:
        raise ValueError("train_val_split needs at least one id, got none")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    num_val = min(int(round(val_fraction * array.size)), array.size - 1)
    shuffled = np.random.default_rng(seed).permutation(array)
    return np.sort(shuffled[num_val:]), np.sort(shuffled[:num_val])
