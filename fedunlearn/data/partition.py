"""Split a training set's sample ids over federated clients.

Every scheme is deterministic under its ``seed`` (``numpy.random.default_rng``)
and returns one sorted int64 array of sample ids (row indices into the training
set) per client. The arrays are disjoint and together cover every sample: no
scheme drops anything, though a client may end up with few samples (Dirichlet)
or none of some classes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "preferential")

# Dirichlet draws are repeated until every client has ``min_size`` samples; this
# bounds the loop so an impossible request fails instead of spinning forever.
_MAX_DIRICHLET_ATTEMPTS = 1000


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


def _finish(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Concatenate each client's pieces into one sorted int64 id array."""
    return [
        np.sort(np.concatenate(pieces)).astype(np.int64) if pieces else np.empty(0, np.int64)
        for pieces in parts
    ]


def iid(labels: npt.ArrayLike, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle all samples and deal them out in equal shares.

    Parameters
    ----------
    labels : array_like of int
        Label of every training sample (only its length is used).
    num_clients : int
        Number of clients, ``1 <= num_clients <= len(labels)``.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 ids per client; sizes differ by at most one.
    """
    n = len(_as_labels(labels))
    _check_clients(n, num_clients)
    rng = np.random.default_rng(seed)
    return _finish([[chunk] for chunk in np.array_split(rng.permutation(n), num_clients)])


def dirichlet(
    labels: npt.ArrayLike,
    num_clients: int,
    beta: float,
    seed: int = 0,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Label-skewed split: per-class Dirichlet(beta) proportions over clients.

    The standard latent-Dirichlet-allocation scheme (Hsu et al. 2019): for each
    class, draw client proportions ``p ~ Dir(beta * 1)`` and cut that class's
    shuffled samples at ``cumsum(p)``. The whole draw is repeated until every
    client holds at least ``min_size`` samples.

    Parameters
    ----------
    labels : array_like of int
        Label of every training sample.
    num_clients : int
        Number of clients.
    beta : float
        Concentration, > 0; small values give few classes per client.
    seed : int
        Seed of all draws.
    min_size : int
        Fewest samples any client may get.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 ids per client.

    Raises
    ------
    ValueError
        If ``beta <= 0``, ``min_size * num_clients`` exceeds the sample count, or
        no draw out of a bounded number meets ``min_size``.
    """
    y = _as_labels(labels)
    _check_clients(len(y), num_clients)
    if not beta > 0:
        raise ValueError(f"dirichlet partition needs beta > 0, got {beta}")
    if min_size * num_clients > len(y):
        raise ValueError(
            f"cannot give each of {num_clients} clients min_size={min_size} samples out of {len(y)}"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(_MAX_DIRICHLET_ATTEMPTS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for ids in by_class:
            shuffled = rng.permutation(ids)
            proportions = rng.dirichlet(np.full(num_clients, float(beta)))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
            for client, chunk in enumerate(np.split(shuffled, cuts)):
                parts[client].append(chunk)
        result = _finish(parts)
        if min(len(ids) for ids in result) >= min_size:
            return result
    raise ValueError(
        f"dirichlet partition: no draw in {_MAX_DIRICHLET_ATTEMPTS} gave each of "
        f"{num_clients} clients >= {min_size} samples at beta={beta}; raise beta or "
        f"lower min_size"
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


def preferential(
    labels: npt.ArrayLike, num_clients: int, seed: int = 0, num_classes: int | None = None
) -> list[np.ndarray]:
    """TIS paper's preferential split: some classes exclusive, the rest shared.

    Each owned class (see :func:`owned_classes`) goes entirely to its owner.
    Every other class is shuffled and split into equal shares over all clients
    (the shares are dealt to clients in a random order, so no client is
    systematically given the remainders).

    Parameters
    ----------
    labels : array_like of int
        Label of every training sample.
    num_clients : int
        Number of clients.
    seed : int
        Seed of the shuffles.
    num_classes : int, optional
        Number of classes; default ``max(labels) + 1``.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 ids per client.
    """
    y = _as_labels(labels)
    _check_clients(len(y), num_clients)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    if y.max() >= num_classes:
        raise ValueError(f"labels reach {int(y.max())} but num_classes is {num_classes}")
    owner_of = {cls: client for client, cls in owned_classes(num_classes, num_clients).items()}
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for cls in range(num_classes):
        ids = np.flatnonzero(y == cls)
        if cls in owner_of:
            parts[owner_of[cls]].append(ids)
            continue
        chunks = np.array_split(rng.permutation(ids), num_clients)
        for client, chunk in zip(rng.permutation(num_clients), chunks, strict=True):
            parts[client].append(chunk)
    return _finish(parts)


def partition(
    labels: npt.ArrayLike,
    scheme: str,
    num_clients: int,
    seed: int = 0,
    beta: float | None = None,
) -> list[np.ndarray]:
    """Partition by scheme name: ``"iid"``, ``"dirichlet"`` or ``"preferential"``.

    Parameters
    ----------
    labels : array_like of int
        Label of every training sample.
    scheme : str
        One of :data:`SCHEMES`.
    num_clients : int
        Number of clients.
    seed : int
        Seed of the scheme.
    beta : float, optional
        Dirichlet concentration; required for ``"dirichlet"``, ignored otherwise
        (so one config can carry it for every scheme).

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 ids per client.
    """
    schemes: dict[str, Callable[[], list[np.ndarray]]] = {
        "iid": lambda: iid(labels, num_clients, seed),
        "dirichlet": lambda: dirichlet(labels, num_clients, _need_beta(beta), seed),
        "preferential": lambda: preferential(labels, num_clients, seed),
    }
    if scheme not in schemes:
        raise ValueError(f"unknown partition scheme '{scheme}'; known: {', '.join(SCHEMES)}")
    return schemes[scheme]()


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
