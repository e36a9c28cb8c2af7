"""Scores against Retrain: NoT's average gap, the TIS ratios (NTA, NFS, RTR), the gaps of
result rows to their reference rows, and the Retrain-vs-Retrain noise floor."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedunlearn.evaluation.rows import (
    MATCH_KEYS,
    _describe,
    _is_number,
    _match,
    _mean_std,
    _missing_references,
    _references,
)

#: The metrics NoT's "Avg. Gap" averages (Retain, Forget, Test accuracy and MIA).
GAP_KEYS: tuple[str, ...] = ("retain", "forget", "test", "mia")

#: Metrics that get a per-seed absolute difference ``d_<key>`` to the reference.
DELTA_KEYS: tuple[str, ...] = (*GAP_KEYS, "mia_efficacy", "asr", "backdoor_acc")


def average_gap(
    metrics: Mapping[str, float],
    reference: Mapping[str, float],
    keys: tuple[str, ...] = GAP_KEYS,
) -> float:
    """NoT's average gap: mean of ``|metrics[k] - reference[k]|`` over ``keys``.

    Parameters
    ----------
    metrics
        The method's metrics (percent).
    reference
        Retrain's metrics of the same scenario and seed.
    keys
        Metrics to average; default Retain, Forget, Test accuracy and MIA.

    Returns
    -------
    float
        Mean absolute difference in percentage points (NaN if any term is NaN).
    """
    if not keys:
        raise ValueError("average_gap needs at least one key")
    return float(np.mean([abs(float(metrics[k]) - float(reference[k])) for k in keys]))


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 (undefined)."""
    return math.nan if denominator == 0 else numerator / denominator


def nta(test_unlearned: float, test_retrain: float) -> float:
    """Normalized Test Accuracy: unlearned test accuracy over Retrain's.

    Parameters
    ----------
    test_unlearned, test_retrain
        Test accuracies (same unit).

    Returns
    -------
    float
        1 means Retrain's accuracy; NaN when Retrain's accuracy is 0.
    """
    return _ratio(test_unlearned, test_retrain)


def nfs(orig: float, unlearned: float, retrain: float) -> float:
    """Normalized Forgetting Score ``(orig - unlearned) / (orig - retrain)``.

    Use forget(target)-set accuracies for NFS and MIA scores for NFS_MIA.

    Parameters
    ----------
    orig, unlearned, retrain
        The metric for the original (pre-unlearning), unlearned and retrained models.

    Returns
    -------
    float
        1 means the unlearned model forgot as much as Retrain, 0 nothing. NaN when
        ``orig == retrain``: then there was nothing to forget by this metric and the
        score is undefined (near-equal values make it unstable; report them too).
    """
    return _ratio(orig - unlearned, orig - retrain)


def rtr(unlearn_seconds: float, retrain_seconds: float) -> float:
    """Recovery Time Ratio: unlearning time over retraining time.

    Parameters
    ----------
    unlearn_seconds, retrain_seconds
        Wall times, non-negative.

    Returns
    -------
    float
        Below 1 means faster than retraining; NaN when ``retrain_seconds`` is 0.
    """
    if unlearn_seconds < 0 or retrain_seconds < 0:
        raise ValueError(f"times must be non-negative, got {unlearn_seconds}, {retrain_seconds}")
    return _ratio(unlearn_seconds, retrain_seconds)


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
        the :data:`GAP_KEYS` metrics.
    reference_method
        The method every other one is compared with.
    match_keys
        A row's reference is the reference method's row with equal values of these
        keys (:data:`MATCH_KEYS`: scenario, seed and, where rows carry it, request).

    Returns
    -------
    list of dict
        Copies of the rows with ``gap`` (:func:`average_gap`)
        and ``d_<key>`` = ``|row[key] - reference[key]|`` for each key of
        :data:`DELTA_KEYS` the row has. The reference's own gaps are 0. Rows of a
        scenario and seed without a reference row get NaN, with a ``UserWarning``
        (:func:`~fedunlearn.evaluation.report.write_report` lists them in the report).

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


def noise_floor(
    rows: Sequence[Mapping[str, Any]], reference_method: str, match_keys: Sequence[str]
) -> tuple[int, float, float] | None:
    """Average gap between reference runs of different seeds: what "no difference" scores.

    Runs of the same scenario are paired; the seed changes the partition, the trained
    model and the request (its id), so ``seed`` and ``request`` are not matched.

    Returns
    -------
    tuple of (int, float, float) or None
        Number of pairs, mean and sample std of their average gaps; ``None`` when no
        two reference rows pair up.
    """
    others = [k for k in match_keys if k not in ("seed", "request")]
    references = [r for r in rows if r["method"] == reference_method]
    pairs = [
        (a, b)
        for a, b in itertools.combinations(references, 2)
        if _match(a, others) == _match(b, others)
    ]
    if not pairs:
        return None
    return (len(pairs), *_mean_std([average_gap(a, b) for a, b in pairs]))
