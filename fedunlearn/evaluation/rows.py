"""Result rows: their keys, how a row finds its reference row, mean ± std over seeds.

Input rows are plain dicts, one per (scenario, method, seed), with at least the keys
``scenario, method, seed, retain, forget, test, mia, mia_efficacy, bytes, flops,
seconds, rounds`` and optionally ``asr, backdoor_acc, nta, nfs, nfs_mia, rtr,
reset_fraction``; other keys (e.g. ``request``) are carried along. Curves are dicts
with ``scenario, method, seed, round`` and metric keys, one per evaluated round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: Keys on which a row is matched with its reference row. ``request`` separates forget
#: sets answered within one scenario and seed; rows without a key match on ``None``.
MATCH_KEYS: tuple[str, ...] = ("scenario", "seed", "request")

# Keys that identify a row rather than measure something: never averaged.
_ID_KEYS = ("scenario", "method", "seed", "request")


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


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (scenario, method).

    Parameters
    ----------
    rows
        Result rows, typically from :func:`~fedunlearn.evaluation.scores.add_gaps`.

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
