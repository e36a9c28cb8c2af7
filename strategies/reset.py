"""Parameter-estimation unlearning (TIS paper): reset the parameters that carry the
most information about the forget set to their initial values; Random Reset as the
baseline; optional TRIM recovery in which only the reset entries may change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedunlearn import protocol as P
from fedunlearn.unlearning.tis import random_mask, reset, reset_fraction, select, tis_scores
from strategies.unlearning import Phase, StateDict, Targets, UnlearningStrategy

Mask = dict[str, torch.Tensor]


class TargetedReset(UnlearningStrategy):
    """TIS: per layer, reset the smallest highest-TIS set holding ``gamma`` of its TIS.

    The clients' curvature statistics ``(h, h')`` (paper Eq. 30) are provided by
    the server before the run (``needs = ("curvature",)``).

    Parameters
    ----------
    gamma : float
        Share in (0, 1] of each layer's total TIS to reset. The config's
        ``unlearn.tis.gammas`` makes one run per value (:meth:`variants`).
    trim_rounds : int
        TRIM recovery rounds on retained data in which only the reset entries train
        (0: reset only).
    """

    name = "TIS"
    section = "tis"
    needs = ("curvature",)

    def __init__(self, targets: Targets, *args: Any, gamma: float = 0.7, trim_rounds: int = 0,
                 **base: Any) -> None:
        super().__init__(targets, *args, **base)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"unlearn.tis.gammas must hold values in (0, 1], got {gamma}")
        if trim_rounds < 0:
            raise ValueError(f"unlearn.tis.trim_rounds must be >= 0, got {trim_rounds}")
        self.gamma = gamma
        self.trim_rounds = trim_rounds
        self.h: StateDict = {}
        self.h_prime: StateDict = {}
        self.mask: Mask = {}
        self._previous: ArrayRecord | None = None

    @classmethod
    def variants(cls, options: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """One run per value of ``gammas``, labelled ``TIS@0.7`` when there are several."""
        rest = dict(options)
        gammas = rest.pop("gammas", [0.7])
        if isinstance(gammas, str) or not isinstance(gammas, list | tuple) or not gammas:
            raise ValueError(f"unlearn.tis.gammas must be a non-empty list, got {gammas!r}")
        return [(cls.name if len(gammas) == 1 else f"{cls.name}@{g:g}", {**rest, "gamma": g})
                for g in gammas]

    def provide(self, provisions: Mapping[str, Any]) -> None:
        """Take the aggregated curvature statistics ``(h, h')``."""
        self.h, self.h_prime = provisions["curvature"]

    def results(self) -> dict[str, float]:
        """gamma and the share of entries reset (after :meth:`perturb`)."""
        return {**super().results(), "gamma": self.gamma,
                "reset_fraction": reset_fraction(self.mask)}

    def choose(self) -> Mask:
        """The entries to reset: :func:`select` of the TIS scores at ``gamma``."""
        if not self.h:
            raise ValueError(f"{self.name} has no curvature statistics: provide them first")
        return select(tis_scores(self.h, self.h_prime), self.gamma)

    def perturb(self, trained: StateDict, initial: StateDict) -> StateDict:
        """Reset the chosen entries to their initial values; keep every other entry."""
        self.mask = self.choose()
        # TRIM's clients train only these entries; the mask rides with every message.
        self.extra_records = {P.MASK: ArrayRecord(
            {k: Array(v.to(torch.uint8).numpy()) for k, v in self.mask.items()})}
        return reset(trained, initial, self.mask)

    def phases(self) -> list[Phase]:
        """TRIM rounds on retained data (the clients receive the mask), if any."""
        if self.trim_rounds < 1:
            return []
        return [self.recovery(self.trim_rounds, name="trim")]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg messages (with the mask, see :meth:`perturb`); remembers the arrays
        sent, whose unmasked entries :meth:`aggregate_train` puts back."""
        self._previous = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg, then every entry outside the mask is put back bit for bit.

        Clients already keep those entries fixed, but a weighted mean of equal floats
        can differ from them in the last bit; TRIM promises them unchanged.
        """
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self._previous is None:
            return arrays, metrics
        fixed = ArrayRecord()
        for name in arrays.keys():
            new = arrays[name].numpy()
            if name in self.mask:
                old = self._previous[name].numpy()
                new = np.where(self.mask[name].numpy(), new, old)
            fixed[name] = Array(np.ascontiguousarray(new))
        return fixed, metrics


class RandomReset(TargetedReset):
    """Random Reset: as many entries per layer as TIS would reset, chosen uniformly."""

    name = "RandomReset"

    def choose(self) -> Mask:
        """TIS's per-layer counts, random locations (seeded)."""
        return random_mask(super().choose(), self.seed)
