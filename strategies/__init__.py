"""Server-side strategies: one small class per idea, on Flower's Message API.

:data:`METHODS` maps the method names used in ``conf/unlearn`` to their classes.
"""

from strategies.ascent import GradientAscent, GradientDescentAscent
from strategies.fedavg import FederatedAveraging
from strategies.finetune import FineTune
from strategies.negation import NoT
from strategies.reset import RandomReset, TargetedReset
from strategies.retrain import Retrain
from strategies.unlearning import Phase, Settings, Targets, UnlearningStrategy

METHODS: dict[str, type[UnlearningStrategy]] = {
    cls.name: cls
    for cls in (Retrain, FineTune, NoT, GradientAscent, GradientDescentAscent, TargetedReset,
                RandomReset)
}
# Methods that need the clients' curvature statistics and a gamma.
RESET_METHODS = (TargetedReset.name, RandomReset.name)


def check_methods(names: list[str]) -> None:
    """Raise a one-line ValueError for a method name that is not in :data:`METHODS`."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown unlearning method(s) {unknown}; known: {', '.join(METHODS)}")


__all__ = [
    "METHODS",
    "RESET_METHODS",
    "FederatedAveraging",
    "FineTune",
    "GradientAscent",
    "GradientDescentAscent",
    "NoT",
    "Phase",
    "RandomReset",
    "Retrain",
    "Settings",
    "TargetedReset",
    "Targets",
    "UnlearningStrategy",
    "check_methods",
]
