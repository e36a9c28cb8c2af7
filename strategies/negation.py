"""NoT: negate chosen layers of the trained model, then fine-tune on retained data.

theta' = -theta_l for l in L_neg, theta_l otherwise (NoT paper, Section 4 and
Algorithm 1); the default L_neg is the first layer (weight and bias).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from strategies.unlearning import Settings, StateDict, Targets, UnlearningStrategy


def negate(state: StateDict, names: Sequence[str]) -> StateDict:
    """A copy of ``state`` with the tensors ``names`` negated and all others shared.

    Raises
    ------
    KeyError
        When a name is not in ``state``.
    """
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"cannot negate unknown parameter(s) {missing}")
    chosen = set(names)
    return {k: (-v if k in chosen else v) for k, v in state.items()}


class NoT(UnlearningStrategy):
    """Weight negation, then ``recovery_rounds`` of FedAvg on retained data.

    Parameters
    ----------
    negated : sequence of str
        Parameter names to negate (resolved from layer selectors by the caller).
    """

    name = "NoT"

    def __init__(self, targets: Targets, settings: Settings, seed: int = 0,
                 fraction_train: float = 1.0, *, negated: Sequence[str],
                 **base: Any) -> None:
        super().__init__(targets, settings, seed, fraction_train, **base)
        if not negated:
            raise ValueError("NoT needs at least one layer to negate")
        self.negated = list(negated)

    def perturb(self, trained: StateDict, initial: StateDict) -> StateDict:
        """Negate the chosen parameters of the trained model."""
        return negate(trained, self.negated)
