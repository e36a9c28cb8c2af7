"""Benchmark of issue 3: every method side by side on every forget scenario, 3 seeds.

Embedded MNIST digits, the NoT CNN, 10 clients, the hyper-parameters fixed in
``conf/`` (nothing is tuned after seeing results: every run is reported). Per
setting and seed one ``fedunlearn run`` trains (or reuses the cached model of the
same training config), answers the scenario's request with Retrain, FT, NoT, GA,
GDA, FedEraser and PGD, and evaluates every round.

Usage: ``.venv/bin/python bench/unlearning.py [--seeds 0 1 2]``; writes
``bench/unlearning/RESULTS.md``, ``results.json`` and the curves' PNGs. The report
is rewritten after every run, so an interrupted benchmark still shows what it did.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runs import ROOT, method_sweep  # noqa: E402

METHODS = "unlearn.methods=[Retrain,FT,NoT,GA,GDA,FedEraser,PGD]"
SETTINGS: dict[str, list[str]] = {
    # Sanity check: one IID client of ten carries no membership signal (NOTES).
    "client-iid": ["scenario=client"],
    "client-dirichlet0.1": ["scenario=client", "partition=dirichlet", "partition.beta=0.1"],
    "class": ["scenario=class"],
    "instance-10pct": ["scenario=instance"],
    "backdoor": ["attack=backdoor", "scenario=backdoor"],
}


def main() -> None:
    method_sweep("bench/unlearning.py", __doc__, METHODS, SETTINGS, ROOT / "bench" / "unlearning",
                 title="Unlearning benchmark", seeds=[0, 1, 2])


if __name__ == "__main__":
    main()
