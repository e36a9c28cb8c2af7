"""The TIS paper's preferential split as a Flower Datasets ``Partitioner``."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner

from fedunlearn.data.partition import _as_labels, owned_classes


class PreferentialPartitioner(Partitioner):
    """The TIS paper's preferential split: some classes exclusive, the rest shared.

    Each owned class (see :func:`owned_classes`) goes entirely to its owner. Every
    other class is shuffled and split into equal shares over all partitions; the
    shares are dealt in a random order, so no partition is systematically given the
    remainders.

    Parameters
    ----------
    num_partitions : int
        Number of partitions (clients).
    partition_by : str
        Column of the labels.
    num_classes : int, optional
        Number of classes; default the largest label + 1.
    seed : int
        Seed of the shuffles.
    """

    def __init__(self, num_partitions: int, partition_by: str = "label",
                 num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._num_classes = num_classes
        self._seed = seed
        self._indices: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        """Number of partitions."""
        return self._num_partitions

    def load_partition(self, partition_id: int) -> Dataset:
        """The rows of partition ``partition_id``, in the dataset's order."""
        if not 0 <= partition_id < self._num_partitions:
            raise ValueError(f"partition_id must be in [0, {self._num_partitions}), "
                             f"got {partition_id}")
        if self._indices is None:
            self._indices = self._assign()
        return self.dataset.select(self._indices[partition_id])

    def _assign(self) -> list[np.ndarray]:
        y = _as_labels(self.dataset[self._partition_by])
        num_classes = int(y.max()) + 1 if self._num_classes is None else self._num_classes
        if y.max() >= num_classes:
            raise ValueError(f"labels reach {int(y.max())} but num_classes is {num_classes}")
        owner_of = {c: p for p, c in owned_classes(num_classes, self._num_partitions).items()}
        rng = np.random.default_rng(self._seed)
        parts: list[list[np.ndarray]] = [[] for _ in range(self._num_partitions)]
        for cls in range(num_classes):
            ids = np.flatnonzero(y == cls)
            if cls in owner_of:
                parts[owner_of[cls]].append(ids)
                continue
            chunks = np.array_split(rng.permutation(ids), self._num_partitions)
            for client, chunk in zip(rng.permutation(self._num_partitions), chunks, strict=True):
                parts[client].append(chunk)
        return [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]
