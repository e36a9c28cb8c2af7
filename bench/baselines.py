"""Benchmark of the common federated baselines, FedEraser and PGD, beside Retrain, FT and NoT.

Embedded MNIST digits, the NoT CNN, 10 clients, the hyper-parameters fixed in ``conf/``
(nothing tuned after seeing results). Per setting and seed one ``fedunlearn run`` trains
(keeping FedEraser's update history) and answers the scenario's request with Retrain, FT,
NoT, FedEraser and PGD: client-wise (one IID client; one client of a Dirichlet(0.1)
split) and class-wise, the settings where both methods apply (FedEraser and PGD are
client-level methods; class-wise, PGD ascends on every client's samples of the class and
FedEraser calibrates with the retained data).

Usage: ``.venv/bin/python bench/baselines.py [--seeds 0 1]``; writes
``bench/baselines/RESULTS.md``, ``results.json`` and the curves' PNGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runs import ROOT, sweep  # noqa: E402

METHODS = "unlearn.methods=[Retrain,FT,NoT,FedEraser,PGD]"
SETTINGS: dict[str, list[str]] = {
    "client-iid": ["scenario=client"],
    "client-dirichlet0.1": ["scenario=client", "partition=dirichlet", "partition.beta=0.1"],
    "class": ["scenario=class"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    args = parser.parse_args()
    command = (".venv/bin/python bench/baselines.py --seeds "
               + " ".join(map(str, args.seeds)) + " --settings " + " ".join(args.settings))
    meta = {
        "settings": {k: " ".join(SETTINGS[k]) for k in args.settings},
        "fixed": METHODS + " + conf/ defaults (unlearn.recovery_rounds=5, "
                 "train.rounds=20, 10 clients, cnn, mnist_embedded)",
    }
    jobs = [(name, seed) for seed in args.seeds for name in args.settings]
    sweep({k: [METHODS, *SETTINGS[k]] for k in args.settings}, jobs,
          ROOT / "bench" / "baselines", title="FedEraser and PGD beside Retrain, FT and NoT",
          command=command, meta=meta)


if __name__ == "__main__":
    main()
