"""Retrain: the gold standard, FedAvg from the initial weights on retained data only."""

from strategies.unlearning import Phase, StateDict, UnlearningStrategy


class Retrain(UnlearningStrategy):
    """Start again from the pre-training weights; as many rounds as the original."""

    name = "Retrain"

    def perturb(self, trained: StateDict, initial: StateDict) -> StateDict:
        """The initial (pre-training) weights, saved with the checkpoint."""
        return {k: v.clone() for k, v in initial.items()}

    def phases(self) -> list[Phase]:
        """``train_rounds`` rounds on retained data."""
        # The gold standard runs as many rounds as the original training, never fewer.
        return [self.recovery(self.recovery_settings.train_rounds, name="retrain",
                              adaptive=False)]
