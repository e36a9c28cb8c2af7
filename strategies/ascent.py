"""Gradient-ascent baselines (Ascent Fails to Forget, paper 003): GA and GDA.

GA: the clients holding forget data ascend the loss on it; GDA: every client
alternates ascent on its forget data with descent on its retained data. Both
then run FedAvg recovery on retained data. The loss is capped and gradients
clipped on the clients, so that no run ends in NaN.
"""

from __future__ import annotations

from typing import Any

from fedunlearn import protocol as P
from strategies.unlearning import Phase, Targets, UnlearningStrategy


class GradientAscent(UnlearningStrategy):
    """GA: ``rounds`` ascent rounds on the forget nodes, then recovery.

    The defaults are ``conf/unlearn/method/ga.yaml``'s: 2 rounds x 5 local epochs at lr
    1e-2, i.e. 10 epochs over a lone forget node's data, within the grid Ascent Fails to
    Forget runs GA on (Appendix J: lr 1e-5..5e-2, 1..10 epochs).

    Parameters
    ----------
    rounds : int
        Rounds of ascent (>= 0).
    lr : float
        Learning rate of the ascent (> 0).
    local_epochs : int
        Local epochs per ascent round (>= 1).
    grad_clip : float
        Gradient-norm clip (> 0; 0 disables it).
    """

    name = "GA"
    section = "ga"
    #: The client behaviour of the ascent rounds (client/modes.py) and its data.
    mode, data = "ascent", "forget"

    def __init__(self, targets: Targets, *args: Any, rounds: int = 2, lr: float = 0.01,
                 local_epochs: int = 5, grad_clip: float = 1.0, **base: Any) -> None:
        super().__init__(targets, *args, **base)
        where = f"unlearn.{self.section}"
        if rounds < 0:
            raise ValueError(f"{where}.rounds must be >= 0, got {rounds}")
        if lr <= 0:
            raise ValueError(f"{where}.lr must be > 0, got {lr}")
        if local_epochs < 1:
            raise ValueError(f"{where}.local_epochs must be >= 1, got {local_epochs}")
        if grad_clip < 0:
            raise ValueError(f"{where}.grad_clip must be >= 0, got {grad_clip}")
        self.rounds, self.lr = rounds, lr
        self.local_epochs, self.grad_clip = local_epochs, grad_clip

    def ascent_nodes(self) -> list[int]:
        """The nodes of the ascent rounds: those holding forget data."""
        return self.targets.forget_nodes

    def ascent_order(self) -> dict[str, Any]:
        """The training order of the ascent rounds."""
        return {P.DATA: self.data, P.MODE: self.mode, P.LR: self.lr,
                P.EPOCHS: self.local_epochs, P.GRAD_CLIP: self.grad_clip,
                P.REQUEST: self.targets.request_json}

    def phases(self) -> list[Phase]:
        """Ascent on forget data of the forget nodes, then FedAvg recovery."""
        first = Phase(self.mode, self.rounds, self.ascent_nodes(), self.ascent_order())
        return [first, self.recovery(self.recovery_settings.recovery_rounds)]


class GradientDescentAscent(GradientAscent):
    """GDA: rounds where every node ascends on forget data and descends on retained data.

    The defaults are ``conf/unlearn/method/gda.yaml``'s: 1 round x 5 local epochs (each an
    ascent and a descent epoch) at lr 5e-3, the largest of the grid Ascent Fails to Forget
    runs GDA on (Appendix J: lr 5e-5..5e-3, 3 or 5 ascent epochs). Parameters as
    :class:`GradientAscent`.
    """

    name = "GDA"
    section = "gda"
    mode, data = "gda", "all"

    def __init__(self, targets: Targets, *args: Any, rounds: int = 1, lr: float = 0.005,
                 local_epochs: int = 5, grad_clip: float = 1.0, **base: Any) -> None:
        super().__init__(targets, *args, rounds=rounds, lr=lr, local_epochs=local_epochs,
                         grad_clip=grad_clip, **base)

    def ascent_nodes(self) -> list[int]:
        """Every node holding forget or retained data."""
        return sorted(set(self.targets.retain_nodes) | set(self.targets.forget_nodes))
