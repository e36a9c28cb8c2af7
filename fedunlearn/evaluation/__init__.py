"""Evaluation of unlearning: per-model metrics and the report over methods and seeds.

Per model: :mod:`~fedunlearn.evaluation.logits` (features, accuracy, margins),
:mod:`~fedunlearn.evaluation.mia` (membership inference), :mod:`~fedunlearn.evaluation.backdoor`,
and all of them at once in :mod:`~fedunlearn.evaluation.evaluate`. Over methods and seeds:
:mod:`~fedunlearn.evaluation.scores` (gaps and ratios against Retrain),
:mod:`~fedunlearn.evaluation.rows` (matching and mean ± std), and the written report
(:mod:`~fedunlearn.evaluation.report`, with :mod:`~fedunlearn.evaluation.markdown`,
:mod:`~fedunlearn.evaluation.jsonio` and :mod:`~fedunlearn.evaluation.plots`).
"""

from fedunlearn.evaluation.backdoor import backdoor_metrics
from fedunlearn.evaluation.evaluate import evaluate_unlearning
from fedunlearn.evaluation.logits import FEATURE_NAMES, accuracy, margins, sample_features
from fedunlearn.evaluation.mia import mia_attack, mia_efficacy
from fedunlearn.evaluation.plots import CURVE_METRICS, tradeoff_plot
from fedunlearn.evaluation.report import write_report
from fedunlearn.evaluation.rows import MATCH_KEYS, summarize
from fedunlearn.evaluation.scores import (
    DELTA_KEYS,
    GAP_KEYS,
    add_gaps,
    add_ratios,
    average_gap,
    nfs,
    nta,
    rtr,
)

__all__ = [
    "CURVE_METRICS",
    "DELTA_KEYS",
    "FEATURE_NAMES",
    "GAP_KEYS",
    "MATCH_KEYS",
    "accuracy",
    "add_gaps",
    "add_ratios",
    "average_gap",
    "backdoor_metrics",
    "evaluate_unlearning",
    "margins",
    "mia_attack",
    "mia_efficacy",
    "nfs",
    "nta",
    "rtr",
    "sample_features",
    "summarize",
    "tradeoff_plot",
    "write_report",
]
