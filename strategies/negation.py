"""NoT: negate chosen layers of the trained model, then fine-tune on retained data.

theta' = -theta_l for l in L_neg, theta_l otherwise (NoT paper, Section 4 and
Algorithm 1), then FedAvg on retained data only. The default L_neg is the paper's:
the weight of the first layer only, not its bias (Section 5.3; the code of Section 11
negates parameter index 0), i.e. ``conv1.weight`` (ViT: ``conv_proj.weight``), from
:func:`fedunlearn.models.default_negation_layers`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fedunlearn.models import conv_norm_pairs, default_negation_layers, resolve_layers
from strategies.unlearning import StateDict, Targets, UnlearningStrategy

LOG = logging.getLogger("fedunlearn")


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
    layers : list of int or str, optional
        Layer selectors (indices into the model's layers, which select weight and
        bias, module or parameter names; see :func:`fedunlearn.models.resolve_layers`);
        None: the model's default, the first layer's weight only (the paper's).
        Resolved to parameter names when the model is provided.
    """

    name = "NoT"
    section = "not"
    needs = ("model",)

    def __init__(self, targets: Targets, *args: Any, layers: list[int | str] | None = None,
                 **base: Any) -> None:
        super().__init__(targets, *args, **base)
        if layers is not None and not layers:
            raise ValueError("unlearn.not.layers is empty; give at least one layer or null")
        self.layers = layers
        self.negated: list[str] = []

    def provide(self, provisions: Mapping[str, Any]) -> None:
        """Resolve the layer selectors on the model; warn when a negation cancels out."""
        arch = provisions["model"]
        selectors = self.layers or default_negation_layers(arch.name)
        try:
            self.negated = resolve_layers(arch.module, selectors)
        except ValueError as exc:
            raise ValueError(f"unlearn.not.layers: {exc}") from exc
        for conv, norm in conv_norm_pairs(arch.module, self.negated):
            LOG.warning("NoT negates %s and the normalization %s after it: "
                        "their negations cancel out", conv, norm)

    def perturb(self, trained: StateDict, initial: StateDict) -> StateDict:
        """Negate the chosen parameters of the trained model."""
        if not self.negated:
            raise ValueError("NoT has no layers to negate: provide the model first")
        return negate(trained, self.negated)
