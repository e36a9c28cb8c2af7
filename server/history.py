"""The clients' training updates, kept every ``interval`` rounds (FedEraser's history).

FedEraser (Liu et al. 2021) forgets by calibrating the updates the clients sent
during training, so the server keeps them: at rounds 1, 1 + interval, 1 + 2 interval,
... the global model it sent and, per partition, the update ``w_k - G`` and the
example count of each usable reply. They live on disk next to the cached trained
model (:func:`history_path`), one file per kept round (``round-NNNN.pt``), each
written atomically, and are loaded one round at a time: ten clients and ten rounds
of a 1M-parameter model are 400 MB, more than a server should hold for bookkeeping.

An ``index.json`` written once training is over (:meth:`UpdateHistory.seal`) names
the interval, the rounds with their partitions and counts, and the digest of the
model the training ended with: a history without it (training interrupted), with
another interval, or of another model is not reused (:meth:`UpdateHistory.open`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Message

from fedunlearn import protocol as P
from server.checkpoint import cache_path

LOG = logging.getLogger("fedunlearn")
StateDict = dict[str, torch.Tensor]
INDEX = "index.json"


def history_path(cache_dir: str | Path, fingerprint: str) -> Path:
    """The history's folder: beside the cached checkpoint of ``fingerprint``."""
    return cache_path(cache_dir, fingerprint).parent / "history"


class HistoryUnavailable(ValueError):
    """No stored history fits (one line saying why)."""


@dataclass(frozen=True)
class StoredRound:
    """One kept round: the global model sent, and per partition its update and count."""

    round: int
    global_state: StateDict
    updates: dict[int, StateDict]
    counts: dict[int, int]


class UpdateHistory:
    """The kept rounds of one training, on disk, loaded one round at a time.

    Parameters
    ----------
    folder : Path
        Where the round files and the index are.
    interval : int
        Rounds between kept rounds (FedEraser's Delta): rounds 1, 1 + interval, ...
    rounds : mapping of int to (mapping of int to int), optional
        Per kept round, the example count of each partition with an update.
    """

    def __init__(self, folder: Path, interval: int,
                 rounds: Mapping[int, Mapping[int, int]] | None = None) -> None:
        if interval < 1:
            raise ValueError(f"the history's interval must be >= 1, got {interval}")
        self.folder, self.interval = Path(folder), interval
        self._counts = {t: dict(c) for t, c in (rounds or {}).items()}

    @classmethod
    def create(cls, folder: Path, interval: int) -> UpdateHistory:
        """An empty history in ``folder``; the files of an earlier one are removed."""
        folder.mkdir(parents=True, exist_ok=True)
        # The index first: a crash halfway through leaves no history that looks whole.
        for old in [folder / INDEX, *folder.glob("round-*.pt"), *folder.glob("*.tmp")]:
            old.unlink(missing_ok=True)
        return cls(folder, interval)

    @classmethod
    def open(cls, folder: Path, interval: int, model: str) -> UpdateHistory:
        """The sealed history in ``folder`` of the model with digest ``model``.

        Raises
        ------
        HistoryUnavailable
            No sealed history there (trained without one, or interrupted), one kept at
            another interval, of another model, or with a round file missing.
        """
        index = folder / INDEX
        if not index.exists():
            raise HistoryUnavailable(f"no update history in {folder} (trained without one, "
                                     "or interrupted)")
        meta = json.loads(index.read_text())
        if meta["interval"] != interval:
            raise HistoryUnavailable(f"its update history keeps every {meta['interval']} "
                                     f"round(s), every {interval} needed")
        if meta["model"] != model:
            raise HistoryUnavailable("its update history is of another trained model")
        history = cls(folder, interval, {
            int(t): {int(pid): int(n) for pid, n in counts.items()}
            for t, counts in meta["rounds"].items()})
        missing = [t for t in history.rounds if not history.path(t).exists()]
        if missing:
            raise HistoryUnavailable(f"its update history lacks round(s) {missing}")
        return history

    # ---- writing ---------------------------------------------------------------
    def keeps(self, server_round: int) -> bool:
        """Whether round ``server_round`` is kept: 1, 1 + interval, 1 + 2 interval, ..."""
        return server_round >= 1 and (server_round - 1) % self.interval == 0

    def record(self, server_round: int, global_state: StateDict,
               updates: Mapping[int, StateDict], counts: Mapping[int, int]) -> None:
        """Write one round (atomically; a round written again replaces the first).

        Parameters
        ----------
        server_round : int
            The training round.
        global_state : dict of str to Tensor
            The global model sent that round.
        updates : mapping of int to (dict of str to Tensor)
            Per partition, its update: its returned weights minus ``global_state``.
        counts : mapping of int to int
            Per partition, the example count of its reply.
        """
        path = self.path(server_round)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"round": server_round, "global": global_state,
                    "updates": dict(updates), "counts": dict(counts)}, tmp)
        tmp.replace(path)
        self._counts[server_round] = dict(counts)

    def seal(self, model: str) -> None:
        """Write the index: the history is whole and belongs to the model ``model``
        (its :func:`fedunlearn.digest.digest`)."""
        meta = {"interval": self.interval, "model": model,
                "rounds": {str(t): {str(pid): n for pid, n in counts.items()}
                           for t, counts in sorted(self._counts.items())}}
        tmp = self.folder / (INDEX + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(self.folder / INDEX)
        LOG.info("update history: %d round(s), every %d, %.2e bytes in %s",
                 len(self.rounds), self.interval, self.bytes(), self.folder)

    # ---- reading -----------------------------------------------------------------
    @property
    def rounds(self) -> list[int]:
        """The kept training rounds, in order."""
        return sorted(self._counts)

    def counts(self, server_round: int) -> dict[int, int]:
        """Per partition with an update kept at ``server_round``, its example count."""
        return dict(self._counts.get(server_round, {}))

    def path(self, server_round: int) -> Path:
        """The file of round ``server_round``."""
        return self.folder / f"round-{server_round:04d}.pt"

    def load(self, server_round: int) -> StoredRound:
        """Round ``server_round`` from disk (only that round is loaded).

        Raises
        ------
        HistoryUnavailable
            The round is not kept, or its file is gone.
        """
        path = self.path(server_round)
        if server_round not in self._counts or not path.exists():
            raise HistoryUnavailable(f"round {server_round} is not in the update history "
                                     f"{self.folder}")
        data = torch.load(path, map_location="cpu", weights_only=True)
        return StoredRound(data["round"], data["global"], data["updates"], data["counts"])

    def __iter__(self) -> Iterator[StoredRound]:
        """The kept rounds in order, each loaded when reached."""
        return (self.load(t) for t in self.rounds)

    def bytes(self) -> int:
        """What the kept rounds take on disk (the storage FedEraser pays for)."""
        return sum(self.path(t).stat().st_size for t in self.rounds if self.path(t).exists())

    def summary(self) -> dict[str, object]:
        """Folder, interval, kept rounds and bytes, for ``train.json``."""
        return {"folder": str(self.folder), "interval": self.interval,
                "rounds": self.rounds, "bytes": self.bytes()}


class Recorder:
    """The training loop's observer that keeps the history's rounds
    (:attr:`strategies.fedavg.FederatedAveraging.observer`).

    A round sent again (too few usable replies) is recorded again: the try that was
    aggregated is the one kept.

    Parameters
    ----------
    history : UpdateHistory
        Where the rounds go.
    partitions : mapping of int to int
        Node id -> partition id: updates are kept by partition, node ids change per run.
    """

    def __init__(self, history: UpdateHistory, partitions: Mapping[int, int]) -> None:
        self.history, self.partitions = history, dict(partitions)

    def __call__(self, server_round: int, arrays: ArrayRecord, replies: list[Message]) -> None:
        """Keep round ``server_round`` if the interval says so: ``arrays`` sent, the
        usable ``replies`` (already checked: their arrays match ``arrays``)."""
        if not self.history.keeps(server_round):
            return
        sent = arrays.to_torch_state_dict()
        updates: dict[int, StateDict] = {}
        counts: dict[int, int] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            pid = self.partitions.get(node)
            if pid is None:  # not a node of the federation's roster: nothing to key it by
                LOG.warning("round %d: node %d has no partition; its update is not kept",
                            server_round, node)
                continue
            weights = msg.content.array_records[P.ARRAYS].to_torch_state_dict()
            updates[pid] = {name: weights[name] - sent[name] for name in sent}
            counts[pid] = int(msg.content.metric_records[P.METRICS][P.NUM_EXAMPLES])
        self.history.record(server_round, sent, updates, counts)
