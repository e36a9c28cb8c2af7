"""Server-side strategies: one small class per idea, on Flower's Message API.

Every module of this package is imported here, so that each unlearning method
registers itself by being defined (:mod:`strategies.registry`): adding a method
is adding its file, its YAML (``conf/unlearn/method/``) and its test.
"""

import importlib
import pkgutil

from strategies.fedavg import FederatedAveraging
from strategies.registry import METHODS, check_methods
from strategies.unlearning import (
    NEEDS,
    Architecture,
    Phase,
    Recovery,
    RunResult,
    Targets,
    UnlearningStrategy,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith(("test_", "conftest", "_")):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "NEEDS",
    "Architecture",
    "FederatedAveraging",
    "Phase",
    "Recovery",
    "RunResult",
    "Targets",
    "UnlearningStrategy",
    "check_methods",
]
