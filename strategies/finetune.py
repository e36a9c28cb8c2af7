"""FT: keep training the trained model with FedAvg on retained data only."""

from strategies.unlearning import UnlearningStrategy


class FineTune(UnlearningStrategy):
    """Fine-tuning baseline: no perturbation, ``recovery_rounds`` on retained data."""

    name = "FT"
