"""Mean ± sample std over seeds per (scenario, method)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedunlearn.evaluation import add_gaps, summarize


def test_summarize_mean_and_sample_std(rows: list[dict[str, Any]]) -> None:
    summary = {(s["scenario"], s["method"]): s for s in summarize(add_gaps(rows))}
    retrain = summary["iid", "Retrain"]
    assert retrain["n"] == 2
    assert retrain["retain_mean"] == 91.0
    assert retrain["retain_std"] == pytest.approx(math.sqrt(2.0))  # ddof = 1
    assert retrain["forget_std"] == pytest.approx(math.sqrt(8.0))
    assert retrain["gap_mean"] == 0.0 and retrain["gap_std"] == 0.0
    not_ = summary["iid", "NoT"]
    assert not_["gap_mean"] == pytest.approx((1.0 + 4.5) / 2)
    assert not_["gap_std"] == pytest.approx(math.sqrt((1.0 - 2.75) ** 2 + (4.5 - 2.75) ** 2))
    assert not_["rounds_mean"] == 5 and "seed_mean" not in not_
    ft = summary["backdoor", "FT"]
    assert ft["n"] == 1 and ft["asr_mean"] == 50.0 and ft["asr_std"] == 0.0
    assert list(summary) == [
        ("iid", "NoT"),
        ("iid", "Retrain"),
        ("backdoor", "Retrain"),
        ("backdoor", "FT"),
    ]
