"""Recovery budget: every round scored against Retrain's final metrics, the first round
inside the noise floor, and the plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedunlearn.evaluation.budget import (
    budget_plot,
    first_round_within,
    gap_by_round,
    mean_gap_curves,
)


def _point(method: str, seed: int, rnd: int, value: float) -> dict:
    return {"scenario": "class", "seed": seed, "method": method, "round": rnd,
            "retain": value, "forget": value, "test": value, "mia": value}


def test_rounds_are_scored_against_the_final_retrain_row_of_their_seed() -> None:
    rows = [{"scenario": "class", "seed": s, "method": "Retrain", "retain": 90.0 + s,
             "forget": 90.0 + s, "test": 90.0 + s, "mia": 90.0 + s} for s in (0, 1)]
    curves = [_point("Retrain", 0, 1, 10.0),  # Retrain's own curve is not scored
              _point("NoT", 0, 0, 10.0), _point("NoT", 0, 1, 88.0),
              _point("NoT", 1, 0, 20.0), _point("NoT", 1, 1, 93.0),
              {**_point("FT", 0, 0, 50.0), "mia": None}]  # a point missing a metric
    points = gap_by_round(curves, rows)
    assert [(p["method"], p["seed"], p["round"], p["gap"]) for p in points] == [
        ("NoT", 0, 0, 80.0), ("NoT", 0, 1, 2.0), ("NoT", 1, 0, 71.0), ("NoT", 1, 1, 2.0)]
    curve = mean_gap_curves(points)[("class", "NoT")]
    assert curve[0][0] == pytest.approx(75.5) and curve[0][1] == pytest.approx(math.sqrt(40.5))
    assert curve[1] == (2.0, 0.0)
    assert first_round_within(curve, 2.0) == 1
    assert first_round_within(curve, 1.9) is None


def test_curves_without_a_retrain_row_are_refused() -> None:
    with pytest.raises(ValueError, match="no curve point has a Retrain row"):
        gap_by_round([_point("NoT", 0, 0, 1.0)], [])
    with pytest.raises(ValueError, match="finite"):
        first_round_within({0: (1.0, 0.0)}, math.nan)


def test_budget_plot_writes_a_png(tmp_path: Path) -> None:
    path = budget_plot(tmp_path / "b.png", {"NoT": {0: (40.0, 2.0), 1: (1.0, 0.5)}},
                       floor=1.5, retrain_rounds=20, title="class")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
