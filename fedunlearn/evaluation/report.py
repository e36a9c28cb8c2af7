"""Aggregate unlearning results over seeds and write them: Markdown, JSON and plots.

Input rows are plain dicts, one per (scenario, method, seed), with at least the keys
``scenario, method, seed, retain, forget, test, mia, mia_efficacy, bytes, flops,
seconds, rounds`` and optionally ``asr, backdoor_acc, nta, nfs, nfs_mia, rtr,
reset_fraction``; other keys (e.g. ``request``) are carried along. Curves are dicts
with ``scenario, method, seed, round`` and metric keys, one per evaluated round. The
Markdown table follows NoT's Table 1: each metric as ``mean ± std (|gap|)`` with
Retrain, measured in the same run, as the reference.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas,
never through ``pyplot``: no global backend switch, no GUI, nothing left open.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedunlearn.evaluation.metrics import GAP_KEYS, average_gap, nfs, nta, rtr

#: Metrics that get a per-seed absolute difference ``d_<key>`` to the reference.
DELTA_KEYS: tuple[str, ...] = (*GAP_KEYS, "mia_efficacy", "asr", "backdoor_acc")

#: Metrics plotted against the recovery round, when the curves carry them.
CURVE_METRICS: tuple[str, ...] = ("retain", "forget", "test", "mia", "asr")

#: Keys on which a row is matched with its reference row. ``request`` separates forget
#: sets answered within one scenario and seed; rows without a key match on ``None``.
MATCH_KEYS: tuple[str, ...] = ("scenario", "seed", "request")

# Keys that identify a row rather than measure something: never averaged.
_ID_KEYS = ("scenario", "method", "seed", "request")

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

_NOTES = (
    "Each cell is mean ± std over seeds (sample std, ddof = 1; 0 for a single seed). "
    "(|gap|) is the mean over seeds of |value − Retrain's value of the same seed|, in "
    "percentage points; Retrain's row is the reference and its gaps are 0.",
    "Avg. Gap: mean of the Retain, Forget, Test and MIA gaps (NoT, Table 1).",
    "MIA: accuracy of an attacker (logistic regression on loss, confidence, entropy) "
    "separating forget samples from as many test samples, scored by stratified k-fold "
    "cross-validation; 50 % means it cannot tell them apart. MIA-eff.: SalUn-style share "
    "of forget samples that an SVC fitted on retain vs. test samples calls non-members.",
    "Comm.: bytes moved through the server; Comp.: FLOPs measured with torch's "
    "FlopCounterMode, which counts convolutions and matrix products only (not "
    "normalization, activations or pooling). Time: wall-clock seconds of unlearning.",
)


# ---- aggregation -----------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1), std 0 for a single value."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return float(array.mean()), std


def _unique(values: Iterable[Any]) -> list[Any]:
    """Distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def _match(row: Mapping[str, Any], match_keys: Sequence[str]) -> tuple[Any, ...]:
    return tuple(row.get(key) for key in match_keys)


def _describe(match: tuple[Any, ...], match_keys: Sequence[str]) -> str:
    """``scenario `iid`, seed 0`` for a match tuple (keys the rows lack are left out)."""
    pairs = zip(match_keys, match, strict=True)
    return ", ".join(
        f"{k} `{v}`" if isinstance(v, str) else f"{k} {v}" for k, v in pairs if v is not None
    )


def _references(
    rows: Sequence[Mapping[str, Any]], reference_method: str, match_keys: Sequence[str]
) -> dict[tuple[Any, ...], Mapping[str, Any]]:
    """The reference row of each match tuple."""
    index: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for row in rows:
        if row["method"] == reference_method:
            key = _match(row, match_keys)
            if key in index:
                raise ValueError(f"two {reference_method} rows for {_describe(key, match_keys)}")
            index[key] = row
    return index


def _missing_references(
    rows: Sequence[Mapping[str, Any]],
    references: Mapping[tuple[Any, ...], Mapping[str, Any]],
    match_keys: Sequence[str],
) -> list[tuple[Any, ...]]:
    """Match tuples that have rows but no reference row (``references``: :func:`_references`)."""
    keys = _unique(_match(row, match_keys) for row in rows)
    return [key for key in keys if key not in references]


def add_ratios(rows: list[dict]) -> list[dict]:
    """NTA, NFS (forget accuracy), NFS_MIA and RTR of each row against the
    ``Original`` (before unlearning) and ``Retrain`` rows of the same request.

    Rows of one request only; returned unchanged when either reference is missing.
    ``nta_other`` (NTA on the non-target classes) is added where rows carry
    ``test_other``.
    """
    ref = {row["method"]: row for row in rows}
    if "Original" not in ref or "Retrain" not in ref:
        return rows
    orig, retrain = ref["Original"], ref["Retrain"]
    out = []
    for row in rows:
        extra = {
            "nta": nta(row["test"], retrain["test"]),
            **({"nta_other": nta(row["test_other"], retrain["test_other"])}
               if "test_other" in row else {}),
            "nfs": nfs(orig["forget"], row["forget"], retrain["forget"]),
            "nfs_mia": nfs(orig["mia"], row["mia"], retrain["mia"]),
        }
        if row["method"] != "Original":
            extra["rtr"] = rtr(row["seconds"], retrain["seconds"])
        out.append({**row, **extra})
    return out


def add_gaps(
    rows: Sequence[Mapping[str, Any]],
    reference_method: str = "Retrain",
    *,
    match_keys: Sequence[str] = MATCH_KEYS,
) -> list[dict[str, Any]]:
    """Add each row's gap to the reference method of the same scenario and seed.

    Parameters
    ----------
    rows
        Result rows (left unchanged); each needs ``scenario``, ``method``, ``seed`` and
        the :data:`~fedunlearn.evaluation.metrics.GAP_KEYS` metrics.
    reference_method
        The method every other one is compared with.
    match_keys
        A row's reference is the reference method's row with equal values of these
        keys (:data:`MATCH_KEYS`: scenario, seed and, where rows carry it, request).

    Returns
    -------
    list of dict
        Copies of the rows with ``gap`` (:func:`~fedunlearn.evaluation.metrics.average_gap`)
        and ``d_<key>`` = ``|row[key] - reference[key]|`` for each key of
        :data:`DELTA_KEYS` the row has. The reference's own gaps are 0. Rows of a
        scenario and seed without a reference row get NaN, with a ``UserWarning``
        (:func:`write_report` lists them in the report).

    Raises
    ------
    ValueError
        Two reference rows match the same key values.
    """
    references = _references(rows, reference_method, match_keys)
    missing = _missing_references(rows, references, match_keys)
    if missing:
        where = "; ".join(_describe(key, match_keys) for key in missing)
        warnings.warn(f"no {reference_method} row for {where}: gaps are NaN", stacklevel=2)
    result = []
    for row in rows:
        reference = references.get(_match(row, match_keys))
        out = dict(row)
        for key in DELTA_KEYS:
            if not _is_number(row.get(key)):
                continue
            has_value = reference is not None and _is_number(reference.get(key))
            out[f"d_{key}"] = abs(row[key] - reference[key]) if has_value else math.nan
        out["gap"] = average_gap(row, reference) if reference is not None else math.nan
        result.append(out)
    return result


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (scenario, method).

    Parameters
    ----------
    rows
        Result rows, typically from :func:`add_gaps`.

    Returns
    -------
    list of dict
        One dict per (scenario, method), in order of first appearance, with
        ``scenario``, ``method``, ``n`` (rows: seeds, times requests where rows carry
        several) and ``<key>_mean``, ``<key>_std`` for every numeric key except ``seed``
        and ``request``. The std is the sample standard deviation (ddof = 1) when
        ``n > 1`` and 0 when ``n == 1``. A key
        missing from some rows is summarized over the rows that have it; NaN values
        propagate (a NaN in any seed makes the mean NaN).
    """
    groups: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["method"]), []).append(row)
    summary = []
    for (scenario, method), members in groups.items():
        out: dict[str, Any] = {"scenario": scenario, "method": method, "n": len(members)}
        keys = _unique(k for row in members for k in row if k not in _ID_KEYS)
        for key in keys:
            values = [row[key] for row in members if _is_number(row.get(key))]
            if values:
                out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(values)
        summary.append(out)
    return summary


# ---- Markdown ----------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _pm(digits: int, delta: bool = False) -> Callable[[Mapping[str, Any], str], str]:
    """Cell formatter ``mean ± std`` (and `` (|gap|)`` when ``delta``)."""

    def cell(summary: Mapping[str, Any], key: str) -> str:
        mean = summary.get(f"{key}_mean")
        if not _finite(mean):
            return "–"
        text = f"{mean:.{digits}f} ± {summary[f'{key}_std']:.{digits}f}"
        gap = summary.get(f"d_{key}_mean")
        if delta and _finite(gap):
            text += f" ({gap:.{digits}f})"
        return text

    return cell


def _scientific(summary: Mapping[str, Any], key: str) -> str:
    mean = summary.get(f"{key}_mean")
    return f"{mean:.2e}" if _finite(mean) else "–"


# (header, row key, formatter) of the main table, in NoT's Table 1 order.
_MAIN_COLUMNS = (
    ("Retain", "retain", _pm(2, delta=True)),
    ("Forget", "forget", _pm(2, delta=True)),
    ("Test", "test", _pm(2, delta=True)),
    ("MIA", "mia", _pm(2, delta=True)),
    ("MIA-eff.", "mia_efficacy", _pm(2)),
    ("Avg. Gap", "gap", _pm(2)),
    ("Comm. (B)", "bytes", _scientific),
    ("Comp. (FLOPs)", "flops", _scientific),
    ("Time (s)", "seconds", _pm(1)),
)
_BACKDOOR_COLUMNS = (
    ("ASR", "asr", _pm(2, delta=True)),
    ("Backdoor acc.", "backdoor_acc", _pm(2, delta=True)),
)
# Parameter-estimation (TIS) metrics and rounds, shown when present.
_EXTRA_COLUMNS = (
    ("Rounds", "rounds", _pm(1)),
    ("NTA", "nta", _pm(3)),
    ("NFS", "nfs", _pm(3)),
    ("NFS_MIA", "nfs_mia", _pm(3)),
    ("RTR", "rtr", _pm(3)),
    ("Reset frac.", "reset_fraction", _pm(4)),
)


def _escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _table(
    summaries: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str, Callable[[Mapping[str, Any], str], str]]],
) -> list[str]:
    header = ["Method", *(name for name, _, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [f"{_escape(s['method'])} (n={s['n']})"]
        cells += [fmt(s, key) for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _present(summaries: Sequence[Mapping[str, Any]], key: str) -> bool:
    return any(f"{key}_mean" in s for s in summaries)


def _noise_floor(
    rows: Sequence[Mapping[str, Any]], reference_method: str, match_keys: Sequence[str]
) -> str:
    """Average gap between reference runs of different seeds: what "no difference" scores.

    Runs of the same scenario are paired; the seed changes the partition, the trained
    model and the request (its id), so ``seed`` and ``request`` are not matched.
    """
    others = [k for k in match_keys if k not in ("seed", "request")]
    references = [r for r in rows if r["method"] == reference_method]
    pairs = [
        (a, b)
        for a, b in itertools.combinations(references, 2)
        if _match(a, others) == _match(b, others)
    ]
    if not pairs:
        return (
            f"{reference_method} vs. {reference_method} noise floor: not available "
            f"(fewer than two {reference_method} seeds)."
        )
    gaps = [average_gap(a, b) for a, b in pairs]
    mean, std = _mean_std(gaps)
    return (
        f"{reference_method} vs. {reference_method} noise floor (avg. gap between "
        f"{reference_method} runs of different seeds; pairs: {len(pairs)}): "
        f"{mean:.2f} ± {std:.2f}. Avg. gaps at or below it are within seed-to-seed noise."
    )


def _ordered(summaries: Sequence[Mapping[str, Any]], reference_method: str) -> list[Any]:
    """Summaries with the reference method first, the rest in their given order."""
    return sorted(summaries, key=lambda s: s["method"] != reference_method)


def _header(title: str, meta: Mapping[str, Any]) -> list[str]:
    first = ("command", "machine", "date")
    lines = [f"# {title}", ""]
    for key in [*first, *(k for k in meta if k not in (*first, "config"))]:
        if key in meta:
            value = f"`{meta[key]}`" if key == "command" else meta[key]
            lines.append(f"- **{key.capitalize()}**: {value}")
    if "config" in meta:
        config = meta["config"]
        text = config if isinstance(config, str) else json.dumps(_jsonable(config), indent=2)
        lines += ["", "<details><summary>Config</summary>", "", "```", text.rstrip(), "```"]
        lines += ["", "</details>"]
    return lines


def _markdown(
    title: str,
    meta: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    plots: Mapping[str, Sequence[Path]],
    reference_method: str,
    match_keys: Sequence[str],
) -> str:
    lines = _header(title, meta)
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in _NOTES]
    references = _references(rows, reference_method, match_keys)
    missing = _missing_references(rows, references, match_keys)
    if missing:
        lines += ["", "## Warnings", ""]
        lines += [
            f"- No {reference_method} row for {_describe(key, match_keys)}: its gaps are NaN "
            "(shown as –)."
            for key in missing
        ]
    for scenario in _unique(r["scenario"] for r in rows):
        summaries = _ordered([s for s in summary if s["scenario"] == scenario], reference_method)
        columns = list(_MAIN_COLUMNS)
        if _present(summaries, "asr"):
            columns += _BACKDOOR_COLUMNS
        lines += ["", f"## Scenario: {scenario}", ""]
        lines += _table(summaries, columns)
        scenario_rows = [r for r in rows if r["scenario"] == scenario]
        lines += ["", _noise_floor(scenario_rows, reference_method, match_keys)]
        extra = [c for c in _EXTRA_COLUMNS if _present(summaries, c[1])]
        if extra:
            lines += [""] + _table(summaries, extra)
        for path in plots.get(scenario, ()):
            lines += ["", f"![{scenario}: {path.stem}]({path.name})"]
    return "\n".join(lines) + "\n"


# ---- JSON --------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON types: NaN/inf become null, arrays and tensors lists, others strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return _jsonable(value.tolist())
    return str(value)


# ---- plots -------------------------------------------------------------------------------


def _safe_name(text: Any) -> str:
    """A file-name-safe version of a scenario name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "scenario"


def _new_axes(figsize: tuple[float, float]) -> tuple[Figure, Any]:
    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


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
                rounds = sorted(by_round)
                mean, std = np.array([_mean_std(by_round[r]) for r in rounds]).T
                (line,) = axes.plot(rounds, mean, marker="o", markersize=3, label=str(method))
                axes.fill_between(rounds, mean - std, mean + std, alpha=0.2, color=line.get_color())
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


# ---- entry point ---------------------------------------------------------------------------


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
        One result dict per (scenario, method, seed) (see the module docstring). Gaps are
        (re)computed here with :func:`add_gaps`.
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

    results = out_dir / "results.json"
    payload = {"title": title, "meta": meta, "rows": rows, "summary": summary, "curves": curves}
    results.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    report = out_dir / "report.md"
    report.write_text(_markdown(title, meta, rows, summary, plots, reference_method, match_keys))

    paths = {results.name: results, report.name: report}
    paths |= {path.name: path for scenario_plots in plots.values() for path in scenario_plots}
    return paths
