"""Scores against Retrain: average gap, NTA / NFS / RTR, per-seed gaps of result rows."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedunlearn.evaluation import add_gaps, add_ratios, average_gap, nfs, nta, rtr, summarize
from tests.evaluation.toys import make_row


def test_average_gap_reproduces_not_table_1() -> None:
    # NoT Table 1, CIFAR-10 CNN: FT against Retrain has gaps 0.82, 2.51, 0.04, 0.67 -> 1.01.
    retrain = {"retain": 91.66, "forget": 83.05, "test": 82.32, "mia": 50.23}
    ft = {"retain": 92.48, "forget": 85.56, "test": 82.36, "mia": 50.90, "other": 1.0}
    assert average_gap(ft, retrain) == pytest.approx(1.01)
    assert average_gap(retrain, retrain) == 0.0
    assert average_gap(ft, retrain, keys=("forget",)) == pytest.approx(2.51)


def test_nta_nfs_rtr_arithmetic() -> None:
    assert nta(60.15, 73.21) == pytest.approx(60.15 / 73.21)
    assert math.isnan(nta(10.0, 0.0))
    assert nfs(orig=90.0, unlearned=20.0, retrain=10.0) == pytest.approx(70.0 / 80.0)
    assert nfs(orig=90.0, unlearned=5.0, retrain=10.0) == pytest.approx(85.0 / 80.0)
    assert math.isnan(nfs(orig=50.0, unlearned=40.0, retrain=50.0))
    assert rtr(30.0, 120.0) == pytest.approx(0.25)
    assert math.isnan(rtr(1.0, 0.0))
    with pytest.raises(ValueError):
        rtr(-1.0, 10.0)


def test_add_gaps_per_seed(rows: list[dict[str, Any]]) -> None:
    gapped = {(r["scenario"], r["method"], r["seed"]): r for r in add_gaps(rows)}
    not0 = gapped["iid", "NoT", 0]
    assert (not0["d_retain"], not0["d_forget"], not0["d_test"], not0["d_mia"]) == (1, 1, 0, 2)
    assert not0["gap"] == pytest.approx(1.0)
    not1 = gapped["iid", "NoT", 1]  # compared with Retrain seed 1, not seed 0
    assert not1["gap"] == pytest.approx((5 + 7 + 0 + 6) / 4)
    assert gapped["iid", "Retrain", 1]["gap"] == 0.0
    ft = gapped["backdoor", "FT", 0]
    assert ft["d_asr"] == 48.0 and ft["d_backdoor_acc"] == 38.0 and ft["d_mia_efficacy"] == 0.0
    assert "d_asr" not in not0
    assert "gap" not in rows[0]  # inputs untouched


def test_add_gaps_without_reference_warns_and_gives_nan(rows: list[dict[str, Any]]) -> None:
    rows.append(make_row("iid", "NoT", 2, 90.0, 80.0, 80.0, 50.0))
    with pytest.warns(UserWarning, match="no Retrain row"):
        gapped = add_gaps(rows)
    assert math.isnan(gapped[-1]["gap"]) and math.isnan(gapped[-1]["d_retain"])
    with pytest.raises(ValueError, match="two Retrain rows"):
        add_gaps([*rows, rows[2]])


def test_rows_of_different_requests_match_their_own_retrain() -> None:
    rows = [
        make_row("iid", "Retrain", 0, 90.0, 80.0, 80.0, 50.0, request="a"),
        make_row("iid", "Retrain", 0, 70.0, 60.0, 60.0, 50.0, request="b"),
        make_row("iid", "NoT", 0, 91.0, 81.0, 81.0, 51.0, request="a"),
        make_row("iid", "NoT", 0, 71.0, 61.0, 61.0, 51.0, request="b"),
    ]
    assert [r["gap"] for r in add_gaps(rows)] == [0.0, 0.0, 1.0, 1.0]
    assert "request_mean" not in summarize(rows)[0]


def test_add_ratios_against_original_and_retrain() -> None:
    rows = [
        make_row("c", "Original", 0, 98.0, 90.0, 96.0, 60.0, seconds=0.0, test_other=97.0),
        make_row("c", "Retrain", 0, 97.0, 50.0, 94.0, 50.0, seconds=20.0, test_other=96.0),
        make_row("c", "TIS", 0, 90.0, 60.0, 84.6, 52.0, seconds=5.0, test_other=86.4),
    ]
    tis = {r["method"]: r for r in add_ratios(rows)}["TIS"]
    assert tis["nta"] == pytest.approx(0.9)  # 84.6 / 94
    assert tis["nta_other"] == pytest.approx(0.9)  # 86.4 / 96
    assert tis["nfs"] == pytest.approx(0.75)  # (90 - 60) / (90 - 50)
    assert tis["nfs_mia"] == pytest.approx(0.8)  # (60 - 52) / (60 - 50)
    assert tis["rtr"] == pytest.approx(0.25)  # 5 / 20
    assert add_ratios(rows[1:]) == rows[1:]  # no Original row: unchanged
