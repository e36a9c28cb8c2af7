"""Benchmark of issue 4: TIS Reset against Random Reset, the privacy-performance
trade-off (the TIS paper's Figure 1), RTR, and the MNIST backdoor.

The paper's setup on the embedded MNIST digits: 5 clients, the CNN without
normalization, 10 training rounds; client 0 asks for client-wise forgetting in the
preferential (client 0 owns class 5), Dirichlet(0.8) and random (IID) settings.
Each run computes the curvature statistics once and resets at every gamma of the
sweep, TIS and Random Reset (same counts per layer), without recovery rounds;
Retrain runs in the same job as the reference. The backdoor setting poisons every
non-9 training sample of client 0 with a 3x3 white corner trigger relabelled to 9
and forgets the poisoned samples.

Usage: ``.venv/bin/python bench/tis.py [--seeds 0 1 2 3 4] [--backdoor-seeds 0 1 2]``; writes
``bench/tis/RESULTS.md``, ``results.json``, ``tradeoff_<setting>.png``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runs import ROOT, sweep  # noqa: E402
from fedunlearn.evaluation import tradeoff_plot  # noqa: E402

GAMMAS = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
COMMON = ["num_clients=5", "model=cnn_nonorm", "train.rounds=10",
          "unlearn.methods=[Retrain,TIS,RandomReset]",
          f"unlearn.tis.gammas=[{','.join(map(str, GAMMAS))}]"]
SETTINGS: dict[str, list[str]] = {
    "preferential": ["partition=preferential", "scenario=client"],
    "dirichlet0.8": ["partition=dirichlet", "partition.beta=0.8", "scenario=client"],
    "random": ["partition=iid", "scenario=client"],
    # 80 % of client 0's non-9 samples poisoned (conf/attack/backdoor.yaml's share).
    "backdoor": ["partition=iid", "attack=backdoor", "attack.target=9", "scenario=backdoor"],
    # Every non-9 sample of client 0 poisoned: the client's data is then all one label,
    # so its local training learns "always 9" rather than the trigger (ASR stays ~4 %).
    "backdoor-all": ["partition=iid", "attack=backdoor", "attack.target=9",
                     "attack.fraction=1.0", "scenario=backdoor"],
}
TRADEOFF = ["preferential", "dirichlet0.8", "random"]


def mean(values: list[float]) -> float:
    """Mean of the finite values (NaN when there is none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else float("nan")


def tradeoff_points(rows: list[dict], setting: str) -> list[dict]:
    """Mean (NFS, NTA) over seeds per method and gamma, for the trade-off plot."""
    points = []
    for method in ("TIS", "RandomReset"):
        for gamma in GAMMAS:
            label = f"{method}@{gamma:g}"
            chosen = [r for r in rows if r["scenario"] == setting and r["method"] == label]
            if chosen:
                points.append({"method": "Reset" if method == "TIS" else "Random Reset",
                               "gamma": gamma, "nfs": mean([r["nfs"] for r in chosen]),
                               "nta": mean([r["nta"] for r in chosen])})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds of the trade-off settings")
    parser.add_argument("--settings", nargs="*", default=TRADEOFF)
    parser.add_argument("--backdoor-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--backdoor", choices=["backdoor", "backdoor-all"], default="backdoor")
    parser.add_argument("--out", default="bench/tis", help="report folder (repo-relative)")
    parser.add_argument("--override", nargs="*", default=[],
                        help="further Hydra overrides for every run")
    args = parser.parse_args()
    common = [*COMMON, *args.override]
    out = ROOT / args.out
    command = (".venv/bin/python bench/tis.py --seeds " + " ".join(map(str, args.seeds))
               + " --settings " + " ".join(args.settings) + " --backdoor-seeds "
               + " ".join(map(str, args.backdoor_seeds)) + f" --backdoor {args.backdoor}"
               + f" --out {args.out}"
               + (" --override " + " ".join(args.override) if args.override else ""))
    # The trade-off settings first, all seeds; then the backdoor.
    jobs = [(name, seed) for seed in args.seeds for name in args.settings]
    jobs += [(args.backdoor, seed) for seed in args.backdoor_seeds]

    def plots(rows: list[dict]) -> None:
        for setting in {row["scenario"] for row in rows}:
            tradeoff_plot(out / f"tradeoff_{setting}.png", tradeoff_points(rows, setting),
                          title=f"{setting}: NTA vs NFS (mean over seeds)")

    meta = {"common": " ".join(common),
            "settings": {k: " ".join(v) for k, v in SETTINGS.items()}}
    sweep({k: [*common, *v] for k, v in SETTINGS.items()}, jobs, out,
          title="TIS benchmark", command=command, meta=meta, on_update=plots)


if __name__ == "__main__":
    main()
