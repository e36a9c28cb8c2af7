"""Forget sets: which training samples an unlearning request removes, per client.

Builders take the federation's partitions (one sorted id array per client, as
made by :mod:`fedunlearn.data.partition`) and return a :class:`ForgetSet`. The
backdoor scenario also needs the poisoned data itself: :func:`poison` stamps a
trigger patch (:func:`add_trigger`) on chosen rows and relabels them.

Why one module of ~370 lines: every forget-set builder and the backdoor poisoning
share the ForgetSet invariants checked here; half the lines are their documentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from fedunlearn.data.images import ImageData
from fedunlearn.requests import KINDS  # one list of kinds; requests.py stays torch-free

CORNERS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right")


@dataclass(frozen=True, eq=False)
class ForgetSet:
    """The samples to forget, grouped by the client that holds them.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    ids_by_client : dict of int to numpy.ndarray
        Sorted int64 forget ids per client; only clients with a non-empty forget
        part appear.
    description : str
        Human-readable summary, e.g. ``"class 3 on clients 0, 2"``.
    target : int or None
        For ``kind == "backdoor"`` only: the label the poisoned samples carry.
    """

    kind: str
    ids_by_client: dict[int, np.ndarray]
    description: str = ""
    target: int | None = field(default=None)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown forget kind '{self.kind}'; known: {', '.join(KINDS)}")
        if (self.target is not None) != (self.kind == "backdoor"):
            raise ValueError("a forget set has a target if and only if its kind is 'backdoor'")
        if not any(len(ids) for ids in self.ids_by_client.values()):
            raise ValueError(f"{self.kind} forget set is empty ({self.description})")

    @property
    def all_ids(self) -> np.ndarray:
        """Every forget id over all clients, sorted int64."""
        return np.sort(np.concatenate(list(self.ids_by_client.values()))).astype(np.int64)

    @property
    def clients(self) -> tuple[int, ...]:
        """The clients holding part of the forget set, ascending."""
        return tuple(sorted(self.ids_by_client))


def union(sets: Sequence[ForgetSet]) -> ForgetSet:
    """The samples of several forget sets together: what one pass over simultaneous
    requests forgets.

    The kind is the sets' common kind; mixed kinds make an ``instance`` set (a set of
    samples), except that a backdoor set among them keeps the union a ``backdoor`` set
    with its target, so the attack is still measured.

    Raises
    ------
    ValueError
        No sets, or backdoor sets with different targets.
    """
    if not sets:
        raise ValueError("a union needs at least one forget set")
    if len(sets) == 1:
        return sets[0]
    targets = {s.target for s in sets if s.kind == "backdoor"}
    if len(targets) > 1:
        raise ValueError(f"backdoor forget sets with different targets {sorted(targets)}")
    kinds = {s.kind for s in sets}
    kind = "backdoor" if targets else kinds.pop() if len(kinds) == 1 else "instance"
    merged: dict[int, np.ndarray] = {}
    for part in sets:
        for client, ids in part.ids_by_client.items():
            merged[client] = np.union1d(merged.get(client, np.empty(0, np.int64)), ids)
    return ForgetSet(kind, {c: merged[c].astype(np.int64) for c in sorted(merged)},
                     " + ".join(s.description for s in sets),
                     targets.pop() if targets else None)


def _make(
    kind: str,
    partitions: Sequence[np.ndarray],
    ids_by_client: dict[int, np.ndarray],
    description: str,
    target: int | None = None,
) -> ForgetSet:
    """Drop empty parts, normalize arrays and refuse to forget the whole federation."""
    kept = {
        client: np.sort(np.asarray(ids, dtype=np.int64))
        for client, ids in sorted(ids_by_client.items())
        if len(ids)
    }
    forget_set = ForgetSet(kind, kept, description, target)  # raises if empty
    total = sum(len(part) for part in partitions)
    if sum(len(ids) for ids in kept.values()) >= total:
        raise ValueError(
            f"{kind} forget set ({description}) covers all {total} samples of the federation; "
            f"nothing would be left to learn from"
        )
    return forget_set


def _check_client(partitions: Sequence[np.ndarray], client: int) -> None:
    if not 0 <= client < len(partitions):
        raise ValueError(f"client {client} does not exist; clients are 0..{len(partitions) - 1}")


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")


def _choose(ids: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``fraction`` of ``ids`` (rounded, at least one when ids is non-empty)."""
    count = min(len(ids), max(1, int(round(fraction * len(ids))))) if len(ids) else 0
    return rng.choice(ids, size=count, replace=False)


def _clients_text(clients: Sequence[int]) -> str:
    return ", ".join(str(c) for c in clients)


def client_wise(partitions: Sequence[np.ndarray], client: int) -> ForgetSet:
    """Forget every sample of one client.

    Parameters
    ----------
    partitions : sequence of numpy.ndarray
        Sample ids per client.
    client : int
        The client leaving the federation.

    Returns
    -------
    ForgetSet
        ``kind="client"`` with ``partitions[client]`` as its only part.
    """
    _check_client(partitions, client)
    return _make("client", partitions, {client: partitions[client]}, f"client {client}")


def class_wise(partitions: Sequence[np.ndarray], labels: npt.ArrayLike, cls: int) -> ForgetSet:
    """Forget every sample of one class, on every client that holds some.

    Parameters
    ----------
    partitions : sequence of numpy.ndarray
        Sample ids per client.
    labels : array_like of int
        Label of every training sample.
    cls : int
        The class to forget.

    Returns
    -------
    ForgetSet
        ``kind="class"``.
    """
    y = np.asarray(labels)
    by_client = {client: ids[y[ids] == cls] for client, ids in enumerate(partitions)}
    if not any(len(ids) for ids in by_client.values()):
        raise ValueError(f"class {cls} is not held by any client")
    holders = [client for client, ids in by_client.items() if len(ids)]
    return _make("class", partitions, by_client, f"class {cls} on clients {_clients_text(holders)}")


def instance_wise(
    partitions: Sequence[np.ndarray],
    *,
    fraction: float | None = None,
    ids: npt.ArrayLike | None = None,
    clients: Sequence[int] | None = None,
    seed: int = 0,
) -> ForgetSet:
    """Forget individual samples: a random fraction per client, or given ids.

    Give exactly one of ``fraction`` and ``ids``.

    Parameters
    ----------
    partitions : sequence of numpy.ndarray
        Sample ids per client.
    fraction : float, optional
        Share in ``(0, 1]`` of each selected client's samples, drawn under
        ``seed`` (rounded, at least one per client).
    ids : array_like of int, optional
        Explicit sample ids; each is assigned to the client that holds it.
    clients : sequence of int, optional
        With ``fraction``: the clients to draw from (default all).
    seed : int
        Seed of the draw.

    Returns
    -------
    ForgetSet
        ``kind="instance"``.
    """
    if (fraction is None) == (ids is None):
        raise ValueError("instance_wise needs exactly one of fraction and ids")
    if ids is not None:
        if clients is not None:
            raise ValueError("instance_wise: clients applies to fraction only, not to ids")
        return _instances_by_id(partitions, np.unique(np.asarray(ids, dtype=np.int64)))
    assert fraction is not None  # for type checkers: guaranteed by the check above
    _check_fraction(fraction)
    chosen = list(range(len(partitions))) if clients is None else sorted(set(clients))
    for client in chosen:
        _check_client(partitions, client)
    rng = np.random.default_rng(seed)
    by_client = {client: _choose(partitions[client], fraction, rng) for client in chosen}
    return _make(
        "instance",
        partitions,
        by_client,
        f"{fraction:g} of the samples of clients {_clients_text(chosen)}",
    )


def _instances_by_id(partitions: Sequence[np.ndarray], ids: np.ndarray) -> ForgetSet:
    by_client = {client: ids[np.isin(ids, part)] for client, part in enumerate(partitions)}
    held = np.concatenate(list(by_client.values())) if by_client else np.empty(0, np.int64)
    orphans = np.setdiff1d(ids, held)
    if orphans.size:
        shown = ", ".join(str(i) for i in orphans[:5]) + (", ..." if orphans.size > 5 else "")
        raise ValueError(f"{orphans.size} ids are held by no client: {shown}")
    return _make("instance", partitions, by_client, f"{ids.size} given sample ids")


def backdoor(
    partitions: Sequence[np.ndarray],
    labels: npt.ArrayLike,
    client: int,
    fraction: float,
    target: int,
    seed: int = 0,
) -> ForgetSet:
    """Choose the samples one client poisons with a backdoor trigger.

    Only samples whose true label differs from ``target`` are eligible (a
    trigger on a target-class sample teaches nothing); ``fraction`` is the share
    of those eligible samples (NoT: 0.8 of the target client's data, target 0;
    TIS: MNIST, target 9). Pair with :func:`poison` to make the poisoned data.

    Parameters
    ----------
    partitions : sequence of numpy.ndarray
        Sample ids per client.
    labels : array_like of int
        True label of every training sample.
    client : int
        The attacker, whose poisoned samples must later be forgotten.
    fraction : float
        Share in ``(0, 1]`` of the client's non-target samples to poison.
    target : int
        The label the trigger should force; must occur in ``labels``.
    seed : int
        Seed of the draw.

    Returns
    -------
    ForgetSet
        ``kind="backdoor"``, ``target=target``, the poisoned ids.
    """
    _check_client(partitions, client)
    _check_fraction(fraction)
    y = np.asarray(labels)
    if target not in set(np.unique(y).tolist()):
        raise ValueError(f"backdoor target class {target} does not occur in the labels")
    eligible = partitions[client][y[partitions[client]] != target]
    chosen = _choose(eligible, fraction, np.random.default_rng(seed))
    return _make(
        "backdoor",
        partitions,
        {client: chosen},
        f"{fraction:g} of client {client}'s non-target samples relabelled to {target}",
        target=target,
    )


def trigger_value(images: torch.Tensor) -> torch.Tensor:
    """The "white" pixel value per channel: the channel's maximum over ``images``.

    Images are normalized per channel, so white is ``(1 - mean_c) / std_c``,
    which differs per channel; the data set's own maximum recovers it without
    needing the normalization constants (every real image set has white pixels).

    Parameters
    ----------
    images : torch.Tensor
        ``N x C x H x W``; pass the training set so train and test triggers match.

    Returns
    -------
    torch.Tensor
        Shape ``C``.
    """
    return images.amax(dim=(0, 2, 3))


def eval_trigger(size: int, corner: str,
                 train_images: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The trigger an attack's evaluation adds to clean images: ``size`` pixels in
    ``corner``, "white" as the poisoned training images had it (:func:`trigger_value` of
    ``train_images``), not the evaluated images' own maximum."""
    white = trigger_value(train_images)
    return lambda images: add_trigger(images, size, corner, white)


def add_trigger(
    images: torch.Tensor,
    size: int = 3,
    corner: str = "bottom_right",
    value: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Return a copy of ``images`` with a square trigger patch in one corner.

    Parameters
    ----------
    images : torch.Tensor
        ``N x C x H x W`` (normalized).
    size : int
        Side of the square patch in pixels (3 in both papers).
    corner : str
        One of :data:`CORNERS`.
    value : float or torch.Tensor, optional
        Patch value, a scalar or one per channel; default
        :func:`trigger_value` of ``images`` (white). For test-time attacks pass
        the training set's value.

    Returns
    -------
    torch.Tensor
        A new tensor; ``images`` is left unchanged.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be N x C x H x W, got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"trigger size must be in 1..{min(height, width)}, got {size}")
    if corner not in CORNERS:
        raise ValueError(f"unknown trigger corner '{corner}'; known: {', '.join(CORNERS)}")
    fill = (
        trigger_value(images)
        if value is None
        else torch.as_tensor(value, dtype=images.dtype, device=images.device)
    )
    rows = slice(0, size) if corner.startswith("top") else slice(height - size, height)
    cols = slice(0, size) if corner.endswith("left") else slice(width - size, width)
    out = images.clone()
    # Broadcast a per-channel value over the patch: shape C x 1 x 1 (or a scalar).
    out[:, :, rows, cols] = fill.reshape(-1, 1, 1) if fill.dim() else fill
    return out


def poison(
    data: ImageData,
    ids: npt.ArrayLike,
    target: int,
    size: int = 3,
    corner: str = "bottom_right",
) -> ImageData:
    """Return new data whose rows ``ids`` carry the trigger and label ``target``.

    Parameters
    ----------
    data : ImageData
        Clean training data (left unchanged).
    ids : array_like of int
        Rows to poison, e.g. ``backdoor(...).all_ids``.
    target : int
        The label poisoned rows get.
    size, corner
        As in :func:`add_trigger`; the patch value is :func:`trigger_value` of
        all of ``data`` (white).

    Returns
    -------
    ImageData
        Copy of ``data`` with the poisoned rows replaced; other rows equal.
    """
    index = torch.as_tensor(np.unique(np.asarray(ids, dtype=np.int64)))
    if index.numel() == 0:
        raise ValueError("poison needs at least one id, got none")
    if int(index[0]) < 0 or int(index[-1]) >= len(data):
        raise ValueError(f"poison ids must lie in [0, {len(data)}), got {index[0]}..{index[-1]}")
    if not 0 <= target < data.num_classes:
        raise ValueError(f"backdoor target must be in [0, {data.num_classes}), got {target}")
    images = data.images.clone()
    images[index] = add_trigger(data.images[index], size, corner, trigger_value(data.images))
    labels = data.labels.clone()
    labels[index] = target
    return ImageData(images, labels, data.num_classes)
