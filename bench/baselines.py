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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runs import ROOT, method_sweep  # noqa: E402

METHODS = "unlearn.methods=[Retrain,FT,NoT,FedEraser,PGD]"
SETTINGS: dict[str, list[str]] = {
    "client-iid": ["scenario=client"],
    "client-dirichlet0.1": ["scenario=client", "partition=dirichlet", "partition.beta=0.1"],
    "class": ["scenario=class"],
}


def main() -> None:
    method_sweep("bench/baselines.py", __doc__, METHODS, SETTINGS, ROOT / "bench" / "baselines",
                 title="FedEraser and PGD beside Retrain, FT and NoT", seeds=[0, 1])


if __name__ == "__main__":
    main()
