"""Figures: recovery curves per scenario and metric, and the TIS trade-off plot.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas,
never through ``pyplot``: no global backend switch, no GUI, nothing left open.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedunlearn.evaluation.rows import _is_number, _mean_std, _unique

#: Metrics plotted against the recovery round, when the curves carry them.
CURVE_METRICS: tuple[str, ...] = ("retain", "forget", "test", "mia", "asr")

_LABELS = {
    "retain": "Retain accuracy (%)",
    "forget": "Forget accuracy (%)",
    "test": "Test accuracy (%)",
    "mia": "MIA (%)",
    "mia_efficacy": "MIA-efficacy (%)",
    "asr": "Attack success rate (%)",
    "backdoor_acc": "Backdoor accuracy (%)",
    "nta": "NTA",
    "nfs": "NFS",
    "nfs_mia": "NFS$_{MIA}$",
}


def _safe_name(text: Any) -> str:
    """A file-name-safe version of a scenario name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "scenario"


def _new_axes(figsize: tuple[float, float]) -> tuple[Figure, Any]:
    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def band(axes: Any, curve: Mapping[Any, tuple[float, float]], label: str) -> None:
    """One line of means against rounds, with mean ± std shaded in its colour.

    ``curve`` maps each round to ``(mean, std)``; rounds are drawn in ascending order.
    """
    rounds = sorted(curve)
    mean, std = np.array([curve[r] for r in rounds]).T
    (line,) = axes.plot(rounds, mean, marker="o", markersize=3, label=label)
    axes.fill_between(rounds, mean - std, mean + std, alpha=0.2, color=line.get_color())


def _plot_curves(
    out_dir: Path,
    curves: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    reference_method: str,
    dpi: int,
) -> dict[Any, list[Path]]:
    """One PNG per (scenario, metric): mean over seeds against round, ± std shaded."""
    written: dict[Any, list[Path]] = {}
    for scenario in _unique(c["scenario"] for c in curves):
        points = [c for c in curves if c["scenario"] == scenario]
        methods = sorted(_unique(c["method"] for c in points), key=lambda m: m != reference_method)
        for metric in metrics:
            if not any(_is_number(c.get(metric)) for c in points):
                continue
            figure, axes = _new_axes((6.0, 4.0))
            for method in methods:
                by_round: dict[Any, list[float]] = {}
                for c in points:
                    if c["method"] == method and _is_number(c.get(metric)):
                        by_round.setdefault(c["round"], []).append(c[metric])
                if not by_round:
                    continue
                band(axes, {r: _mean_std(by_round[r]) for r in by_round}, str(method))
            axes.set_xlabel("recovery round")
            axes.set_ylabel(_LABELS.get(metric, metric))
            axes.set_title(f"{scenario}: {metric}")
            axes.grid(alpha=0.3)
            axes.legend(fontsize=8)
            path = out_dir / f"curves_{_safe_name(scenario)}_{metric}.png"
            figure.savefig(path, dpi=dpi)
            written.setdefault(scenario, []).append(path)
    return written


def tradeoff_plot(
    out_path: Path,
    points: Sequence[Mapping[str, Any]],
    retrain_point: tuple[float, float] = (1.0, 1.0),
    *,
    x_key: str = "nfs",
    y_key: str = "nta",
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """The TIS paper's Figure 1: performance (NTA) against forgetting (NFS) over gamma.

    As in the paper, the forgetting score is on the x-axis (NFS, or NFS_MIA for IID
    client forgetting via ``x_key="nfs_mia"``) and NTA on the y-axis; one line per method
    (e.g. Reset, Random Reset) through its gamma values, each point annotated with its
    gamma, and Retrain as a red cross at ``retrain_point``. Points sharing a method and
    gamma (several seeds) are averaged, with ± std error bars.

    Parameters
    ----------
    out_path
        PNG file to write (its folder must exist).
    points
        Dicts with ``method``, ``gamma``, ``x_key`` and ``y_key``.
    retrain_point
        Where the ideal (Retrain) sits, ``(x, y)``.
    x_key, y_key
        Point keys for the axes.
    title
        Optional figure title.
    dpi
        Resolution of the PNG.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    out_path = Path(out_path)
    figure, axes = _new_axes((5.5, 4.5))
    for method in _unique(p["method"] for p in points):
        by_gamma: dict[float, list[Mapping[str, Any]]] = {}
        for p in points:
            if p["method"] == method:
                by_gamma.setdefault(float(p["gamma"]), []).append(p)
        gammas = sorted(by_gamma)
        x_mean, x_std = np.array([_mean_std([p[x_key] for p in by_gamma[g]]) for g in gammas]).T
        y_mean, y_std = np.array([_mean_std([p[y_key] for p in by_gamma[g]]) for g in gammas]).T
        axes.errorbar(
            x_mean, y_mean, xerr=x_std, yerr=y_std, marker="o", capsize=2, label=str(method)
        )
        for gamma, x, y in zip(gammas, x_mean, y_mean, strict=True):
            axes.annotate(
                f"γ={gamma:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
    axes.scatter(*retrain_point, marker="x", s=80, color="red", zorder=3, label="Retrain")
    axes.set_xlabel(_LABELS.get(x_key, x_key))
    axes.set_ylabel(_LABELS.get(y_key, y_key))
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(out_path, dpi=dpi)
    return out_path
