"""The report of an unlearning run: ``results.json``, ``report.md`` and recovery curves.

Rows and curves are described in :mod:`fedunlearn.evaluation.rows`; the Markdown in
:mod:`fedunlearn.evaluation.markdown`, the figures in :mod:`fedunlearn.evaluation.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedunlearn.evaluation.jsonio import _write_json
from fedunlearn.evaluation.markdown import _markdown
from fedunlearn.evaluation.plots import CURVE_METRICS, _plot_curves
from fedunlearn.evaluation.rows import MATCH_KEYS, summarize
from fedunlearn.evaluation.scores import add_gaps


def write_report(
    out_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    curves: Sequence[Mapping[str, Any]],
    *,
    title: str,
    meta: Mapping[str, Any],
    reference_method: str = "Retrain",
    match_keys: Sequence[str] = MATCH_KEYS,
    curve_metrics: Sequence[str] = CURVE_METRICS,
    dpi: int = 150,
) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and the recovery-curve PNGs.

    Parameters
    ----------
    out_dir
        Folder to write to (created if needed).
    rows
        One result dict per (scenario, method, seed) (see :mod:`~fedunlearn.evaluation.rows`).
        Gaps are (re)computed here with :func:`add_gaps`.
    curves
        Per-round metric dicts with ``scenario``, ``method``, ``seed``, ``round``; other
        non-numeric keys (e.g. ``phase``) are carried into the JSON only.
    title
        Report title.
    meta
        Run description shown in the header: ``command``, ``config`` (a mapping or
        text), ``machine``, ``date`` first, then any other keys as given.
    reference_method, match_keys
        The reference method and how rows are matched with it (:func:`add_gaps`).
    curve_metrics
        Metrics to plot against the round; those a scenario's curves lack are skipped.
    dpi
        Resolution of the PNGs.

    Returns
    -------
    dict of str to pathlib.Path
        File name to path: ``results.json``, ``report.md`` and each
        ``curves_<scenario>_<metric>.png``. ``results.json`` holds ``title``, ``meta``,
        ``rows`` (with gaps), ``summary`` (:func:`summarize`) and ``curves``; NaN and
        infinite values are written as ``null`` so that the file is strict JSON.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = add_gaps(rows, reference_method, match_keys=match_keys)
    summary = summarize(rows)
    plots = _plot_curves(out_dir, curves, curve_metrics, reference_method, dpi)

    payload = {"title": title, "meta": meta, "rows": rows, "summary": summary, "curves": curves}
    results = _write_json(out_dir / "results.json", payload)
    report = out_dir / "report.md"
    report.write_text(_markdown(title, meta, rows, summary, plots, reference_method, match_keys))

    paths = {results.name: results, report.name: report}
    paths |= {path.name: path for scenario_plots in plots.values() for path in scenario_plots}
    return paths
