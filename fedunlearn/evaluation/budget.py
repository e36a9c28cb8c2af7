"""Recovery budget: a method's average gap to Retrain against the recovery rounds it spent.

NoT's central claim is "as good as Retrain, far cheaper". A fixed number of recovery
rounds answers it at one point; the curve answers it at every budget. Each round of a
method's recovery curve (the per-round metrics every run records) is scored against
Retrain's *final* metrics of the same scenario, seed and request, and the first round at
which the mean gap over seeds enters the Retrain-vs-Retrain noise floor is read off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedunlearn.evaluation.plots import _new_axes, band
from fedunlearn.evaluation.rows import MATCH_KEYS, _is_number, _match, _mean_std, _references
from fedunlearn.evaluation.scores import GAP_KEYS, average_gap


def gap_by_round(
    curves: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    reference_method: str = "Retrain",
    *,
    match_keys: Sequence[str] = MATCH_KEYS,
) -> list[dict[str, Any]]:
    """Average gap of every recovery-curve point to the reference's final metrics.

    Parameters
    ----------
    curves
        Curve points (``scenario``, ``seed``, ``method``, ``round`` and the
        :data:`~fedunlearn.evaluation.scores.GAP_KEYS` metrics), as a run's
        ``results.json`` holds them.
    rows
        The same runs' result rows; the reference method's row of each match tuple is the
        target every round is scored against.
    reference_method
        The gold standard (its own curve is left out).
    match_keys
        Keys that pair a point with its reference row (scenario, seed, request).

    Returns
    -------
    list of dict
        ``scenario``, ``seed``, ``method``, ``round`` and ``gap`` per point that has a
        reference and every gap metric.

    Raises
    ------
    ValueError
        No point has a reference row (nothing to score).
    """
    references = _references(rows, reference_method, match_keys)
    points = []
    for c in curves:
        reference = references.get(_match(c, match_keys))
        if (c["method"] == reference_method or reference is None
                or not all(_is_number(c.get(k)) for k in GAP_KEYS)):
            continue
        points.append({"scenario": c["scenario"], "seed": c.get("seed"), "method": c["method"],
                       "round": int(c["round"]), "gap": average_gap(c, reference)})
    if not points:
        raise ValueError(f"no curve point has a {reference_method} row to be scored against")
    return points


def mean_gap_curves(
    points: Sequence[Mapping[str, Any]],
) -> dict[tuple[Any, Any], dict[int, tuple[float, float]]]:
    """Mean and sample std over seeds of the gap, per (scenario, method) and round.

    Parameters
    ----------
    points
        :func:`gap_by_round`'s output.

    Returns
    -------
    dict
        ``{(scenario, method): {round: (mean, std)}}``, rounds ascending.
    """
    grouped: dict[tuple[Any, Any], dict[int, list[float]]] = {}
    for p in points:
        grouped.setdefault((p["scenario"], p["method"]), {}).setdefault(p["round"], []).append(
            p["gap"])
    return {key: {r: _mean_std(by_round[r]) for r in sorted(by_round)}
            for key, by_round in grouped.items()}


def first_round_within(curve: Mapping[int, tuple[float, float]], floor: float) -> int | None:
    """The first round whose mean gap is at or below ``floor``, or None if none is.

    Parameters
    ----------
    curve
        ``{round: (mean, std)}`` of one scenario and method (:func:`mean_gap_curves`).
    floor
        The Retrain-vs-Retrain noise floor of the scenario (percentage points).
    """
    if not math.isfinite(floor):
        raise ValueError(f"the noise floor must be a finite number, got {floor}")
    return next((r for r in sorted(curve) if curve[r][0] <= floor), None)


def budget_plot(
    out_path: Path,
    curves: Mapping[Any, Mapping[int, tuple[float, float]]],
    *,
    floor: float | None,
    retrain_rounds: int | None,
    title: str,
    dpi: int = 150,
) -> Path:
    """Average gap against recovery rounds, one line per method, ± std shaded.

    The noise floor is a grey band from 0 (gaps under it are seed-to-seed noise) and
    Retrain's own cost a dashed vertical line: a curve that enters the band left of that
    line reaches Retrain's quality for less than Retrain costs.

    Parameters
    ----------
    out_path
        PNG to write (its folder must exist).
    curves
        ``{method: {round: (mean, std)}}`` of one scenario.
    floor
        The scenario's Retrain-vs-Retrain noise floor, or None (one seed only).
    retrain_rounds
        Retrain's rounds, or None.
    title
        The figure's title.
    dpi
        Resolution of the PNG.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    figure, axes = _new_axes((6.0, 4.0))
    for method, curve in curves.items():
        band(axes, curve, str(method))
    if floor is not None:
        axes.axhspan(0.0, floor, color="grey", alpha=0.2, label="Retrain noise floor")
    if retrain_rounds is not None:
        axes.axvline(retrain_rounds, color="red", linestyle="--", label="Retrain's rounds")
    axes.set_xlabel("recovery rounds spent")
    axes.set_ylabel("average gap to Retrain (points)")
    axes.set_yscale("symlog", linthresh=1.0)
    axes.set_ylim(bottom=0.0)  # a gap is never negative
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    out_path = Path(out_path)
    figure.savefig(out_path, dpi=dpi)
    return out_path
