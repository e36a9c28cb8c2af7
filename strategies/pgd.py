"""PGD (Halimi et al. 2022, "Federated Unlearning: How to Efficiently Erase a Client in
FL?"): projected gradient ascent of the forget data's loss, then FedAvg recovery.

The paper's server builds a reference model, the mean of the other clients' models,
and the target client maximizes its loss by projected gradient ascent within an L2
ball around it (radius: a third of the distance between the reference and a random
model), so that ascent cannot run off to an arbitrary model; FedAvg on the retained
clients follows. Here the reference is one round of FedAvg on the retained data from
the trained model (the mean of the other clients' models after a round, which this
server computes as it goes, rather than stored updates); the nodes holding forget
data then ascend from it with every step projected back into the ball
(:func:`fedunlearn.training.project_to_ball`: ``radius`` x the distance to a random
model of the same architecture, computed on the node), and recovery follows.
"""

from __future__ import annotations

from typing import Any

from fedunlearn import protocol as P
from strategies.ascent import GradientAscent
from strategies.unlearning import Phase, Targets


class ProjectedGradientAscent(GradientAscent):
    """PGD: a reference round, projected ascent on the forget nodes, then recovery.

    Parameters
    ----------
    radius : float
        The ball's radius as a share of the distance between the reference model and a
        random one (0 < radius; the paper takes 1/3).
    reference_rounds : int
        FedAvg rounds on retained data that make the reference model (>= 1).
    rounds, lr, local_epochs, grad_clip
        Of the ascent, as in :class:`~strategies.ascent.GradientAscent`.
    """

    name = "PGD"
    section = "pgd"

    def __init__(self, targets: Targets, *args: Any, radius: float = 1 / 3,
                 reference_rounds: int = 1, rounds: int = 2, lr: float = 0.01,
                 local_epochs: int = 5, grad_clip: float = 1.0, **base: Any) -> None:
        super().__init__(targets, *args, rounds=rounds, lr=lr, local_epochs=local_epochs,
                         grad_clip=grad_clip, **base)
        if not radius > 0:
            raise ValueError(f"unlearn.{self.section}.radius must be > 0, got {radius}")
        if reference_rounds < 1:
            raise ValueError(f"unlearn.{self.section}.reference_rounds must be >= 1, "
                             f"got {reference_rounds}")
        self.radius, self.reference_rounds = radius, reference_rounds

    def ascent_order(self) -> dict[str, Any]:
        """GA's order, with every step projected into the ball around the received model."""
        return {**super().ascent_order(), P.RADIUS: self.radius}

    def phases(self) -> list[Phase]:
        """The reference rounds (plain recovery rounds), projected ascent, recovery."""
        reference = self.recovery(self.reference_rounds, name="reference", adaptive=False)
        return [reference, *super().phases()]
