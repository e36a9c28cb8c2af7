"""Benchmark of issue 7: what one rogue node of ten does to training, per aggregation rule.

Embedded MNIST, the NoT CNN, 10 IID clients, ``train.rounds`` FedAvg rounds in
Flower's simulation. Node 9 runs :func:`client.rogue.rogue_app`: every training
reply it sends has all weights set to 0.5, the reported attack. Three conditions
per rule: no rogue; the rogue with its honest example count (in bounds: only the
aggregation rule can bound it); the rogue claiming 10^12 examples (the server
refuses it by the node's reported training-set size, whatever the rule).

Usage: ``.venv/bin/python bench/robust.py [--rounds 10] [--seed 0]``; writes
``bench/robust/RESULTS.md`` and ``results.json`` (rewritten after every run; a run
that was interrupted resumes, keeping the cells already measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runs import ROOT, machine  # noqa: E402
from client.rogue import rogue_app  # noqa: E402
from fedunlearn.config import compose  # noqa: E402
from fedunlearn.runtime.simulation import simulate  # noqa: E402

RULES = ["fedavg", "trimmed_mean", "median", "krum", "multikrum", "bulyan"]
ROGUE = 9
CONDITIONS = {
    "clean": None,
    "rogue 0.5, honest count": {"value": 0.5, "num_examples": None},
    "rogue 0.5, 10^12 examples": {"value": 0.5, "num_examples": 10**12},
}


def run(rule: str, condition: str, rounds: int, seed: int, work: Path) -> dict:
    """Train once; return the final test accuracy, refused replies and wall time."""
    cfg = compose([f"train.rounds={rounds}", f"seed={seed}", "reuse_trained=false",
                   f"cache_dir={work / 'cache'}", f"train.aggregation.name={rule}"])
    attack = CONDITIONS[condition]
    app = None if attack is None else rogue_app({ROGUE}, **attack)
    started = time.perf_counter()
    outcome = simulate(cfg, work / f"{rule}-{condition}", "train", client_app=app)
    return {"rule": rule, "condition": condition, "seed": seed, "rounds": rounds,
            "test_accuracy": 100 * outcome.test_accuracy,
            "refused": len(outcome.checkpoint.refused),
            "seconds": time.perf_counter() - started}


def write(rows: list[dict], out: Path, command: str) -> None:
    """RESULTS.md (a rule x condition table of test accuracy) and results.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": command, "machine": machine(),
                                                  "rows": rows}, indent=2))
    cell = {(r["rule"], r["condition"]): r for r in rows}
    lines = ["# One rogue node of ten, per aggregation rule", "",
             f"Command: `{command}`  ", f"Machine: {machine()}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "Final test accuracy (%) of the global model after training, embedded MNIST, "
             f"10 IID clients, node {ROGUE} rogue (all weights 0.5 in every reply). "
             "In brackets: replies the server refused.", "",
             "| rule | " + " | ".join(CONDITIONS) + " |",
             "| --- | " + " | ".join("---" for _ in CONDITIONS) + " |"]
    for rule in RULES:
        cells = []
        for condition in CONDITIONS:
            r = cell.get((rule, condition))
            cells.append("" if r is None else f"{r['test_accuracy']:.1f} ({r['refused']})")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", nargs="+", default=RULES)
    args = parser.parse_args()
    command = (f".venv/bin/python bench/robust.py --rounds {args.rounds} --seed {args.seed} "
               f"--rules {' '.join(args.rules)}")
    out = ROOT / "bench" / "robust"
    # An interrupted benchmark resumes: cells of the same rounds and seed are kept.
    saved = out / "results.json"
    rows = [r for r in (json.loads(saved.read_text())["rows"] if saved.exists() else [])
            if (r["rounds"], r["seed"]) == (args.rounds, args.seed)]
    done = {(r["rule"], r["condition"]) for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for rule in args.rules:
            for condition in CONDITIONS:
                if condition.endswith("10^12 examples") and rule != "fedavg":
                    continue  # refused before aggregation: the same for every rule
                if (rule, condition) in done:
                    continue
                rows.append(run(rule, condition, args.rounds, args.seed, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
                write(rows, out, command)


if __name__ == "__main__":
    main()
