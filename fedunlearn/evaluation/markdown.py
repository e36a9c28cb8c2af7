"""``report.md``: run header, notes, and per scenario NoT's Table 1 with Retrain first.

Each metric is shown as ``mean ± std (|gap|)`` with Retrain, measured in the same run, as
the reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedunlearn.evaluation.jsonio import _jsonable
from fedunlearn.evaluation.rows import (
    _describe,
    _is_number,
    _missing_references,
    _references,
    _unique,
)
from fedunlearn.evaluation.scores import noise_floor

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


def _noise_floor_line(
    rows: Sequence[Mapping[str, Any]], reference_method: str, match_keys: Sequence[str]
) -> str:
    """The noise-floor sentence of a scenario (see :func:`.scores.noise_floor`)."""
    floor = noise_floor(rows, reference_method, match_keys)
    if floor is None:
        return (
            f"{reference_method} vs. {reference_method} noise floor: not available "
            f"(fewer than two {reference_method} seeds)."
        )
    pairs, mean, std = floor
    return (
        f"{reference_method} vs. {reference_method} noise floor (avg. gap between "
        f"{reference_method} runs of different seeds; pairs: {pairs}): "
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
        lines += ["", _noise_floor_line(scenario_rows, reference_method, match_keys)]
        extra = [c for c in _EXTRA_COLUMNS if _present(summaries, c[1])]
        if extra:
            lines += [""] + _table(summaries, extra)
        for path in plots.get(scenario, ()):
            lines += ["", f"![{scenario}: {path.stem}]({path.name})"]
    return "\n".join(lines) + "\n"
