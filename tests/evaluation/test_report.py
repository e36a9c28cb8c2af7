"""Report: gaps to Retrain per seed, mean ± std over seeds, report.md, results.json, PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedunlearn.evaluation import add_gaps, add_ratios, summarize, tradeoff_plot, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COST = {"mia_efficacy": 40.0, "bytes": 1.5e9, "flops": 2.5e12, "seconds": 12.0, "rounds": 5}


def _row(
    scenario: str,
    method: str,
    seed: int,
    retain: float,
    forget: float,
    test: float,
    mia: float,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "method": method,
        "seed": seed,
        "retain": retain,
        "forget": forget,
        "test": test,
        "mia": mia,
        **COST,
        **extra,
    }


@pytest.fixture()
def rows() -> list[dict[str, Any]]:
    return [
        # NoT is listed before Retrain on purpose: the report must still put Retrain first.
        _row("iid", "NoT", 0, 93.0, 85.0, 82.0, 52.0),
        _row("iid", "NoT", 1, 95.0, 87.0, 84.0, 56.0),
        _row("iid", "Retrain", 0, 92.0, 84.0, 82.0, 50.0),
        _row("iid", "Retrain", 1, 90.0, 80.0, 84.0, 50.0),
        _row("backdoor", "Retrain", 0, 90.0, 10.0, 80.0, 50.0, asr=2.0, backdoor_acc=78.0),
        _row("backdoor", "FT", 0, 91.0, 60.0, 81.0, 70.0, asr=50.0, backdoor_acc=40.0),
    ]


@pytest.fixture()
def curves() -> list[dict[str, Any]]:
    out = []
    for method, offset in (("Retrain", 0.0), ("NoT", 5.0)):
        for seed in (0, 1):
            for rnd in range(4):
                value = 10.0 + 20.0 * rnd + offset + seed
                out.append(
                    {
                        "scenario": "iid",
                        "method": method,
                        "seed": seed,
                        "round": rnd,
                        "phase": "recover",
                        "retain": value,
                        "forget": value - 5,
                        "test": value - 8,
                        "mia": 50.0 + seed,
                    }
                )
    out += [
        {
            "scenario": "backdoor",
            "method": "FT",
            "seed": 0,
            "round": r,
            "retain": 80.0,
            "forget": 20.0,
            "test": 79.0,
            "mia": 55.0,
            "asr": 90.0 - 10 * r,
        }
        for r in range(3)
    ]
    return out


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
    rows.append(_row("iid", "NoT", 2, 90.0, 80.0, 80.0, 50.0))
    with pytest.warns(UserWarning, match="no Retrain row"):
        gapped = add_gaps(rows)
    assert math.isnan(gapped[-1]["gap"]) and math.isnan(gapped[-1]["d_retain"])
    with pytest.raises(ValueError, match="two Retrain rows"):
        add_gaps([*rows, rows[2]])


def test_summarize_mean_and_sample_std(rows: list[dict[str, Any]]) -> None:
    summary = {(s["scenario"], s["method"]): s for s in summarize(add_gaps(rows))}
    retrain = summary["iid", "Retrain"]
    assert retrain["n"] == 2
    assert retrain["retain_mean"] == 91.0
    assert retrain["retain_std"] == pytest.approx(math.sqrt(2.0))  # ddof = 1
    assert retrain["forget_std"] == pytest.approx(math.sqrt(8.0))
    assert retrain["gap_mean"] == 0.0 and retrain["gap_std"] == 0.0
    not_ = summary["iid", "NoT"]
    assert not_["gap_mean"] == pytest.approx((1.0 + 4.5) / 2)
    assert not_["gap_std"] == pytest.approx(math.sqrt((1.0 - 2.75) ** 2 + (4.5 - 2.75) ** 2))
    assert not_["rounds_mean"] == 5 and "seed_mean" not in not_
    ft = summary["backdoor", "FT"]
    assert ft["n"] == 1 and ft["asr_mean"] == 50.0 and ft["asr_std"] == 0.0
    assert list(summary) == [
        ("iid", "NoT"),
        ("iid", "Retrain"),
        ("backdoor", "Retrain"),
        ("backdoor", "FT"),
    ]


def _table(report: str, scenario: str) -> list[str]:
    section = report.split(f"## Scenario: {scenario}\n")[1]
    return [line for line in section.strip().splitlines() if line.startswith("|")]


def test_write_report(
    tmp_path: Path, rows: list[dict[str, Any]], curves: list[dict[str, Any]]
) -> None:
    meta = {
        "command": "fedunlearn run scenario=iid",
        "config": {"seed": [0, 1], "lr": 0.01},
        "machine": "test box",
        "date": "2025-01-01 00:00:00 UTC",
    }
    paths = write_report(tmp_path / "out", rows, curves, title="Test report", meta=meta)

    report = paths["report.md"].read_text()
    assert report.startswith("# Test report")
    for text in (
        "`fedunlearn run scenario=iid`",
        "test box",
        "2025-01-01",
        '"lr": 0.01',
        "FlopCounterMode",
        "convolutions and matrix products",
    ):
        assert text in report
    iid = _table(report, "iid")
    assert iid[0].startswith(
        "| Method | Retain | Forget | Test | MIA | MIA-eff. | Avg. Gap | "
        "Comm. (B) | Comp. (FLOPs) | Time (s) |"
    )
    assert "ASR" not in iid[0]
    assert iid[2].startswith("| Retrain (n=2) | 91.00 ± 1.41 (0.00) | 82.00 ± 2.83 (0.00) |")
    assert iid[3].startswith("| NoT (n=2) | 94.00 ± 1.41 (3.00) |")
    assert "| 2.75 ± 2.47 | 1.50e+09 | 2.50e+12 | 12.0 ± 0.0 |" in iid[3]
    backdoor = _table(report, "backdoor")
    assert "| ASR | Backdoor acc. |" in backdoor[0]
    assert backdoor[2].startswith("| Retrain (n=1)")
    assert backdoor[3].endswith("| 50.00 ± 0.00 (48.00) | 40.00 ± 0.00 (38.00) |")
    assert "noise floor" in report and "## Warnings" not in report

    results = json.loads(paths["results.json"].read_text(), parse_constant=_reject)
    assert results["meta"] == meta and results["title"] == "Test report"
    assert results["curves"] == curves
    written = results["rows"]
    assert [{k: out[k] for k in row} for out, row in zip(written, rows, strict=True)] == rows
    assert written[1]["gap"] == pytest.approx(4.5)
    assert {s["method"] for s in results["summary"]} == {"NoT", "Retrain", "FT"}

    expected = {f"curves_iid_{m}.png" for m in ("retain", "forget", "test", "mia")}
    expected |= {f"curves_backdoor_{m}.png" for m in ("retain", "forget", "test", "mia", "asr")}
    plots = {name for name in paths if name.endswith(".png")}
    assert plots == expected
    for name in plots:
        data = paths[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
        assert f"]({name})" in report


def _reject(constant: str) -> None:
    raise AssertionError(f"results.json is not strict JSON: {constant}")


def test_write_report_lists_missing_references(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    rows.append(_row("class/3", "NoT", 0, 90.0, 5.0, 80.0, 50.0, nfs=float("nan"), nta=0.9))
    with pytest.warns(UserWarning):
        paths = write_report(tmp_path, rows, [], title="t", meta={})
    report = paths["report.md"].read_text()
    assert "## Warnings" in report and "scenario `class/3`, seed 0" in report
    assert "| NTA | NFS |" in report  # the extra table, NaN shown as a dash
    results = json.loads(paths["results.json"].read_text(), parse_constant=_reject)
    assert results["rows"][-1]["gap"] is None and results["rows"][-1]["nfs"] is None
    assert not list(tmp_path.glob("*.png"))


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


def test_rows_of_different_requests_match_their_own_retrain() -> None:
    rows = [
        _row("iid", "Retrain", 0, 90.0, 80.0, 80.0, 50.0, request="a"),
        _row("iid", "Retrain", 0, 70.0, 60.0, 60.0, 50.0, request="b"),
        _row("iid", "NoT", 0, 91.0, 81.0, 81.0, 51.0, request="a"),
        _row("iid", "NoT", 0, 71.0, 61.0, 61.0, 51.0, request="b"),
    ]
    assert [r["gap"] for r in add_gaps(rows)] == [0.0, 0.0, 1.0, 1.0]
    assert "request_mean" not in summarize(rows)[0]


def test_noise_floor_pairs_retrains_of_one_scenario_across_requests(tmp_path: Path) -> None:
    # Each seed's request has its own id (the seed is part of its content).
    rows = [
        _row("iid", "Retrain", 0, 92.0, 84.0, 82.0, 50.0, request="a"),
        _row("iid", "Retrain", 1, 90.0, 80.0, 84.0, 50.0, request="b"),
    ]
    report = write_report(tmp_path, rows, [], title="t", meta={})["report.md"].read_text()
    # avg gap = (2 + 4 + 2 + 0) / 4 = 2.00 over the one pair
    assert "noise floor (avg. gap between Retrain runs of different seeds; pairs: 1): 2.00" \
        in report


def test_add_ratios_against_original_and_retrain() -> None:
    rows = [
        _row("c", "Original", 0, 98.0, 90.0, 96.0, 60.0, seconds=0.0, test_other=97.0),
        _row("c", "Retrain", 0, 97.0, 50.0, 94.0, 50.0, seconds=20.0, test_other=96.0),
        _row("c", "TIS", 0, 90.0, 60.0, 84.6, 52.0, seconds=5.0, test_other=86.4),
    ]
    tis = {r["method"]: r for r in add_ratios(rows)}["TIS"]
    assert tis["nta"] == pytest.approx(0.9)  # 84.6 / 94
    assert tis["nta_other"] == pytest.approx(0.9)  # 86.4 / 96
    assert tis["nfs"] == pytest.approx(0.75)  # (90 - 60) / (90 - 50)
    assert tis["nfs_mia"] == pytest.approx(0.8)  # (60 - 52) / (60 - 50)
    assert tis["rtr"] == pytest.approx(0.25)  # 5 / 20
    assert add_ratios(rows[1:]) == rows[1:]  # no Original row: unchanged
