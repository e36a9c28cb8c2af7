"""The TIS trade-off figure (the recovery curves are checked through the report)."""

from __future__ import annotations

from pathlib import Path

from fedunlearn.evaluation import tradeoff_plot
from tests.evaluation.toys import PNG_MAGIC


def test_tradeoff_plot(tmp_path: Path) -> None:
    points = [
        {
            "method": method,
            "gamma": gamma,
            "seed": seed,
            "nta": 1 - gamma / 200 - seed / 100,
            "nfs": gamma / 100 * (1.0 if method == "Reset" else 0.2),
        }
        for method in ("Reset", "Random Reset")
        for gamma in (30, 60, 70)
        for seed in (0, 1)
    ]
    path = tradeoff_plot(tmp_path / "tradeoff.png", points, title="preferential")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
