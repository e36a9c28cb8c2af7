"""Benchmark of issue 9, item 2: fixed against adaptive recovery rounds.

Class-wise forgetting on the embedded MNIST digits (10 clients, the NoT CNN, the
defaults of ``conf/``): FT and NoT recover either for the fixed
``unlearn.recovery_rounds`` (5) or until the retain nodes' validation accuracy is
back within ``unlearn.recovery_epsilon`` of the trained model's (at most
``unlearn.recovery_max_rounds``), with Retrain beside them in the same run. The
report gives the gap to Retrain and the cost (rounds, bytes) of each.

Usage: ``.venv/bin/python bench/recovery.py [--seeds 0]``; writes
``bench/recovery/RESULTS.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runs import ROOT, sweep  # noqa: E402

METHODS = "unlearn.methods=[Retrain,FT,NoT]"
SETTINGS: dict[str, list[str]] = {
    "class-fixed5": ["scenario=class"],
    "class-adaptive1pt": ["scenario=class", "unlearn.recovery_epsilon=0.01",
                          "unlearn.recovery_max_rounds=30"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    command = ".venv/bin/python bench/recovery.py --seeds " + " ".join(map(str, args.seeds))
    meta = {"settings": {k: " ".join(v) for k, v in SETTINGS.items()},
            "fixed": METHODS + " + conf/ defaults (train.rounds=20, 10 clients, cnn, "
                     "mnist_embedded)"}
    jobs = [(name, seed) for seed in args.seeds for name in SETTINGS]
    sweep({k: [METHODS, *v] for k, v in SETTINGS.items()}, jobs, ROOT / "bench" / "recovery",
          title="Fixed against adaptive recovery", command=command, meta=meta)


if __name__ == "__main__":
    main()
