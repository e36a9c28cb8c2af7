"""FedEraser (Liu et al. 2021, "FedEraser: Enabling Efficient Client-Level Data Removal
from Federated Learning Models"): the stored training updates, calibrated on retained data.

During training the server keeps, every ``interval`` (Delta) rounds t_1 = 1, t_2 = 1 +
Delta, ..., each client's update U_{t_j,k} = w_{t_j,k} - G_{t_j} and its example count
n_k (:mod:`server.history`). To forget, it starts again from the initial weights G'_1
and, for each kept round in order, the retained clients with an update kept at t_j
train ``calibration_ratio`` x the training's local epochs from G'_{t_j} on their
retained data (the calibration), giving Û_k = ŵ_k - G'_{t_j}. Per parameter tensor,
the calibrated update keeps the stored update's length and takes the calibration's
direction, Ũ_k = ||U_{t_j,k}|| Û_k / ||Û_k||, and G'_{t_{j+1}} = G'_{t_j} +
sum_k n_k Ũ_k / sum_k n_k with the stored counts. A client-wise target holds no retained
data: it calibrates nothing and its stored updates are never used. ``recovery_rounds``
of FedAvg on retained data may follow (the paper: none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from strategies.replies import reply_node
from strategies.unlearning import Phase, StateDict, Targets, UnlearningStrategy

if TYPE_CHECKING:
    from server.history import UpdateHistory

CALIBRATION = "calibration"


def calibrate(current: StateDict, calibrated: Mapping[int, StateDict],
              stored: Mapping[int, StateDict], counts: Mapping[int, int]) -> StateDict:
    """FedEraser's step: G' + sum_k n_k Ũ_k / sum_k n_k, Ũ_k = ||U_k|| Û_k / ||Û_k||.

    Norms are per parameter tensor; a calibration that did not move a tensor (Û_k = 0)
    gives it no direction, so its calibrated update is 0. Computed in float64; integer
    buffers (BatchNorm's step counts) are rounded back.

    Parameters
    ----------
    current : dict of str to Tensor
        G'_{t_j}: the model the calibration started from.
    calibrated : mapping of int to (dict of str to Tensor)
        Per partition, its calibrated weights ŵ_k (summed in this order).
    stored : mapping of int to (dict of str to Tensor)
        Per partition, its update U_k kept at round t_j.
    counts : mapping of int to int
        Per partition, the example count n_k kept with it.
    """
    total = sum(counts[k] for k in calibrated)
    out = {}
    for name, g in current.items():
        base = g.double()
        step = torch.zeros_like(base)
        for k, weights in calibrated.items():
            direction = weights[name].double() - base
            length = torch.linalg.vector_norm(direction)
            if length > 0:
                scale = torch.linalg.vector_norm(stored[k][name].double()) / length
                step += counts[k] * scale * direction
        new = base + step / total
        out[name] = (new if g.is_floating_point() else new.round()).to(g.dtype)
    return out


class FedEraser(UnlearningStrategy):
    """FedEraser: from the initial weights, one calibration round per kept training round.

    Parameters
    ----------
    interval : int
        Delta: training keeps rounds 1, 1 + interval, ... (>= 1); training reads it
        from this section too, so a history kept at another interval is not reused.
    calibration_ratio : float
        Calibration epochs as a share of ``train.local_epochs`` (> 0; at least one
        epoch; the paper's 0.5).
    lr : float or None
        Learning rate of the calibration (> 0); None: ``train.lr``.
    recovery_rounds : int
        FedAvg rounds on retained data after the calibration (>= 0; the paper: 0).
    """

    name = "FedEraser"
    section = "federaser"
    needs = ("history",)

    def __init__(self, targets: Targets, *args: Any, interval: int = 2,
                 calibration_ratio: float = 0.5, lr: float | None = None,
                 recovery_rounds: int = 0, **base: Any) -> None:
        super().__init__(targets, *args, **base)
        where = f"unlearn.{self.section}"
        if interval < 1:
            raise ValueError(f"{where}.interval must be >= 1, got {interval}")
        if not calibration_ratio > 0:
            raise ValueError(f"{where}.calibration_ratio must be > 0, got {calibration_ratio}")
        if lr is not None and not lr > 0:
            raise ValueError(f"{where}.lr must be > 0 or null, got {lr}")
        if recovery_rounds < 0:
            raise ValueError(f"{where}.recovery_rounds must be >= 0, got {recovery_rounds}")
        self.interval, self.calibration_ratio = interval, calibration_ratio
        self.lr, self.recovery_rounds = lr, recovery_rounds
        self.history: UpdateHistory | None = None
        # The kept training round each calibration round (1, 2, ...) calibrates.
        self.schedule: list[int] = []
        self._round = 0

    # ---- what the method says ------------------------------------------------------
    def provide(self, provisions: Mapping[str, Any]) -> None:
        """Take the update history; it must be kept at this method's interval."""
        history = provisions["history"]
        if history.interval != self.interval:
            raise ValueError(f"unlearn.{self.section}.interval is {self.interval}, but the "
                             f"update history keeps every {history.interval} round(s)")
        self.history = history

    def calibration_epochs(self) -> int:
        """``calibration_ratio`` x the training's local epochs, at least one."""
        return max(1, round(self.calibration_ratio * self.recovery_settings.local_epochs))

    def perturb(self, trained: StateDict, initial: StateDict) -> StateDict:
        """The initial (pre-training) weights: G'_1 = G_1."""
        return initial

    def phases(self) -> list[Phase]:
        """One calibration round per kept round with a retained client, then recovery."""
        if self.history is None:
            raise ValueError("FedEraser: provide the update history first")
        retained = {self.ranks.get(node) for node in self.targets.retain_nodes}
        self.schedule = [t for t in self.history.rounds
                         if retained & set(self.history.counts(t))]
        r = self.recovery_settings
        lr = self.lr if self.lr is not None else (r.train_lr if r.train_lr is not None else r.lr)
        plain = self.recovery(len(self.schedule), name=CALIBRATION, adaptive=False)
        calibration = replace(plain, order={**plain.order, P.LR: lr,
                                            P.EPOCHS: self.calibration_epochs()})
        return [calibration, *([self.recovery(self.recovery_rounds)]
                               if self.recovery_rounds else [])]

    def results(self) -> dict[str, float]:
        """The history's storage (bytes, kept rounds) and the calibration's rounds."""
        out = super().results()
        if self.history is not None:
            out.update(history_bytes=self.history.bytes(),
                       history_rounds=len(self.history.rounds),
                       calibration_rounds=len(self.schedule),
                       calibration_epochs=self.calibration_epochs())
        return out

    # ---- running -------------------------------------------------------------------
    def _calibrating(self) -> bool:
        return self.phase is not None and self.phase.name == CALIBRATION

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The base's messages; the round tells which kept round is calibrated."""
        self._round = server_round
        return super().configure_train(server_round, arrays, config, grid)

    def select_nodes(self, grid: Grid) -> list[int]:
        """While calibrating: every retained node with an update kept at the round's
        training round (each kept update is calibrated: no sampling)."""
        if not self._calibrating() or self.history is None:
            return super().select_nodes(grid)
        kept = self.history.counts(self.schedule[self._round - 1])
        return sorted((n for n in self.participants or [] if self.ranks.get(n) in kept),
                      key=self._rank)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """While calibrating, the calibrated aggregate (:func:`calibrate`) of the usable
        replies, weighted by the kept counts; otherwise the base's aggregate."""
        if not self._calibrating() or self.history is None:
            return super().aggregate_train(server_round, replies)
        usable = self.usable_replies(server_round, replies)
        kept = self.history.load(self.schedule[server_round - 1])
        calibrated = {}
        for msg in usable:  # rank order: the sum repeats bit for bit
            pid = self.ranks.get(reply_node(msg, self._sent))
            if pid in kept.updates:
                calibrated[pid] = msg.content.array_records[self.arrayrecord_key]
        if not calibrated:
            return None, None
        state = calibrate(self._arrays_sent.to_torch_state_dict(),
                          {k: a.to_torch_state_dict() for k, a in calibrated.items()},
                          kept.updates, kept.counts)
        metrics = self.train_metrics_aggr_fn([m.content for m in usable], self.weighted_by_key)
        return ArrayRecord(state), metrics
