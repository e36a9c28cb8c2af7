"""The written report: report.md (tables, noise floor, warnings), results.json, PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedunlearn.evaluation import write_report
from tests.evaluation.toys import PNG_MAGIC, make_row


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
    rows.append(make_row("class/3", "NoT", 0, 90.0, 5.0, 80.0, 50.0, nfs=float("nan"), nta=0.9))
    with pytest.warns(UserWarning):
        paths = write_report(tmp_path, rows, [], title="t", meta={})
    report = paths["report.md"].read_text()
    assert "## Warnings" in report and "scenario `class/3`, seed 0" in report
    assert "| NTA | NFS |" in report  # the extra table, NaN shown as a dash
    results = json.loads(paths["results.json"].read_text(), parse_constant=_reject)
    assert results["rows"][-1]["gap"] is None and results["rows"][-1]["nfs"] is None
    assert not list(tmp_path.glob("*.png"))


def test_noise_floor_pairs_retrains_of_one_scenario_across_requests(tmp_path: Path) -> None:
    # Each seed's request has its own id (the seed is part of its content).
    rows = [
        make_row("iid", "Retrain", 0, 92.0, 84.0, 82.0, 50.0, request="a"),
        make_row("iid", "Retrain", 1, 90.0, 80.0, 84.0, 50.0, request="b"),
    ]
    report = write_report(tmp_path, rows, [], title="t", meta={})["report.md"].read_text()
    # avg gap = (2 + 4 + 2 + 0) / 4 = 2.00 over the one pair
    assert "noise floor (avg. gap between Retrain runs of different seeds; pairs: 1): 2.00" \
        in report
