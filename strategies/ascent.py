"""Gradient-ascent baselines (Ascent Fails to Forget, paper 003): GA and GDA.

GA: the clients holding forget data ascend the loss on it; GDA: every client
alternates ascent on its forget data with descent on its retained data. Both
then run FedAvg recovery on retained data. The loss is capped and gradients
clipped on the clients, so that no run ends in NaN.
"""

from strategies.unlearning import Phase, UnlearningStrategy


class GradientAscent(UnlearningStrategy):
    """GA: ``ga.rounds`` ascent rounds on the forget nodes, then recovery."""

    name = "GA"
    section = "ga"

    def _order(self, mode: str, data: str) -> dict:
        knobs = self.settings.extra[self.section]
        return {"data": data, "mode": mode, "lr": float(knobs["lr"]),
                "epochs": int(knobs["local_epochs"]), "grad-clip": float(knobs["grad_clip"]),
                "request": self.targets.request_json}

    def phases(self) -> list[Phase]:
        """Ascent on forget data of the forget nodes, then FedAvg recovery."""
        rounds = int(self.settings.extra[self.section]["rounds"])
        ascent = Phase("ascent", rounds, self.targets.forget_nodes, self._order("ascent", "forget"))
        return [ascent, self.recovery(self.settings.recovery_rounds)]


class GradientDescentAscent(GradientAscent):
    """GDA: rounds where every node ascends on forget data and descends on retained data."""

    name = "GDA"
    section = "gda"

    def phases(self) -> list[Phase]:
        """Alternating ascent/descent on all involved nodes, then FedAvg recovery."""
        rounds = int(self.settings.extra[self.section]["rounds"])
        nodes = sorted(set(self.targets.retain_nodes) | set(self.targets.forget_nodes))
        gda = Phase("gda", rounds, nodes, self._order("gda", "all"))
        return [gda, self.recovery(self.settings.recovery_rounds)]
