"""Parameter-estimation unlearning (TIS): client-side curvature, server-side scores and resets.

:mod:`fedunlearn.unlearning.curvature` computes, on a client, the diagonal curvature of the
mean cross-entropy over its forget and retained samples; :mod:`fedunlearn.unlearning.tis`
aggregates the clients' replies on the server (paper Eq. 30), scores every parameter
(Eq. 28), selects per layer what to reset, resets it and builds the TRIM recovery mask.
"""

from fedunlearn.unlearning.curvature import (
    ESTIMATORS,
    NONNEGATIVE,
    diagonal_curvature,
    resolve_estimator,
    supported_estimators,
    supports_backpack,
)
from fedunlearn.unlearning.tis import (
    CurvatureAccumulator,
    CurvatureReplyError,
    random_mask,
    reset,
    reset_fraction,
    select,
    tis_scores,
    trim_mask,
)

__all__ = [
    "ESTIMATORS",
    "NONNEGATIVE",
    "CurvatureAccumulator",
    "CurvatureReplyError",
    "diagonal_curvature",
    "random_mask",
    "reset",
    "reset_fraction",
    "resolve_estimator",
    "select",
    "supported_estimators",
    "supports_backpack",
    "tis_scores",
    "trim_mask",
]
