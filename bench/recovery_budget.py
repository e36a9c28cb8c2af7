"""Benchmark of issue 11, item 5: the recovery budget as a curve.

How much cheaper than Retrain is a method at equal quality? Per scenario (the five of
``bench/unlearning.py``) FT, NoT and TIS+TRIM recover for as many rounds as training
took (20), with Retrain beside them in the same run; every round's metrics are scored
against Retrain's final ones (average gap, NoT Table 1). The page plots the gap against
the rounds spent, marks Retrain's rounds and the Retrain-vs-Retrain noise floor, and
gives the first round at which each method's mean gap enters that floor. TIS's round 0
is its reset model: its curvature query (one more round, and most of its compute) is not
on the axis; TRIM trains only the reset entries (the TIS paper, Appendix 2).

Usage: ``.venv/bin/python bench/recovery_budget.py [--seeds 0]``; writes
``bench/unlearning/budget/RESULTS.md``, ``results.json`` and ``budget_<scenario>.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runs import ROOT, sweep  # noqa: E402
from bench.unlearning import SETTINGS  # noqa: E402
from fedunlearn.evaluation.budget import (  # noqa: E402
    budget_plot,
    first_round_within,
    gap_by_round,
    mean_gap_curves,
)
from fedunlearn.evaluation.scores import noise_floor  # noqa: E402

ROUNDS = 20  # conf/train/default.yaml's train.rounds: the budget runs up to Retrain's
METHODS = "unlearn.methods=[Retrain,FT,NoT,TIS]"
COMMON = [METHODS, f"unlearn.recovery_rounds={ROUNDS}", f"unlearn.tis.trim_rounds={ROUNDS}"]
SHOWN = (1, 2, 3, 5, 10, 20)


def budget_section(out: Path, floors_from: Path | None = None) -> list[str]:
    """Plots and the Markdown section of the budget, from ``out/results.json``.

    Each scenario's noise floor comes from this run's Retrain rows when it has several
    seeds, else from ``floors_from`` (another benchmark's ``results.json`` of the same
    settings and seeds, e.g. ``bench/unlearning``'s).
    """
    results = json.loads((out / "results.json").read_text())
    rows, points = results["rows"], gap_by_round(results["curves"], results["rows"])
    floor_rows = json.loads(floors_from.read_text())["rows"] if floors_from else []
    curves = mean_gap_curves(points)
    lines = ["", "## Recovery budget", "",
             "Mean average gap to Retrain's final metrics (points) after each number of "
             "rounds spent; *within floor*: the first round whose mean gap is at or below "
             "the scenario's Retrain-vs-Retrain noise floor ('–': never within "
             f"{ROUNDS} rounds; 'n/a': one seed, no floor).", "",
             "Noise floors: this run's Retrain pairs, else those of "
             f"`{floors_from.relative_to(ROOT)}`." if floors_from else ""]
    header = ["| Scenario | Method | " + " | ".join(f"r{r}" for r in SHOWN)
              + " | Within floor | Retrain rounds | Floor |", "|---" * (len(SHOWN) + 5) + "|"]
    for scenario in dict.fromkeys(p["scenario"] for p in points):
        scenario_rows = [r for r in rows if r["scenario"] == scenario]
        keys = ("scenario", "seed", "request")
        floor = (noise_floor(scenario_rows, "Retrain", keys)
                 or noise_floor([r for r in floor_rows if r["scenario"] == scenario],
                                "Retrain", keys))
        retrain = [r["rounds"] for r in scenario_rows if r["method"] == "Retrain"]
        retrain_rounds = int(max(retrain)) if retrain else None
        methods = {m: c for (s, m), c in curves.items() if s == scenario}
        lines += ["", f"### {scenario}", "", *header]
        budget_plot(out / f"budget_{scenario}.png", methods,
                    floor=floor[1] if floor else None, retrain_rounds=retrain_rounds,
                    title=f"{scenario}: gap against rounds spent")
        for method, curve in methods.items():
            cells = [f"{curve[r][0]:.2f}" if r in curve else "" for r in SHOWN]
            first = first_round_within(curve, floor[1]) if floor else None
            within = "n/a" if floor is None else ("–" if first is None else first)
            lines.append(f"| {scenario} | {method} | " + " | ".join(cells)
                         + f" | {within} | {retrain_rounds} | "
                         + (f"{floor[1]:.2f} ± {floor[2]:.2f}" if floor else "n/a") + " |")
        lines += ["", f"![{scenario}: budget](budget_{scenario}.png)"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--floors-from", default="bench/unlearning/results.json",
                        help="results.json whose Retrain rows give the noise floors when "
                             "this run has one seed (repo-relative)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--render-only", action="store_true",
                        help="redo the budget section from the committed results.json")
    args = parser.parse_args()
    out = ROOT / "bench" / "unlearning" / "budget"
    if not args.render_only:
        command = (".venv/bin/python bench/recovery_budget.py --seeds "
                   + " ".join(map(str, args.seeds)) + " --settings " + " ".join(args.settings))
        meta = {"settings": {k: " ".join(SETTINGS[k]) for k in args.settings},
                "fixed": " ".join(COMMON) + " + conf/ defaults (train.rounds=20, 10 clients, "
                         "cnn, mnist_embedded; TIS's estimator auto, gamma 0.7)"}
        jobs = [(name, seed) for seed in args.seeds for name in args.settings]
        sweep({k: [*COMMON, *SETTINGS[k]] for k in args.settings}, jobs, out,
              title="Recovery budget", command=command, meta=meta)
    report = out / "RESULTS.md"
    text = report.read_text().split("\n## Recovery budget\n")[0].rstrip("\n")
    floors = ROOT / args.floors_from if args.floors_from else None
    report.write_text(text + "\n" + "\n".join(budget_section(out, floors)) + "\n")


if __name__ == "__main__":
    main()
