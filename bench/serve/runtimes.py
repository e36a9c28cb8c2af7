"""The same short live federation in both runtimes: Flower's simulation and real processes.

One `fedunlearn serve` run of a few rounds with a class-wise request, once in the Ray
simulation and once with `runtime=deployment` (a SuperLink and 3 SuperNodes on
127.0.0.1 talking gRPC), from the same config and seed. Writes
``bench/serve/runtimes.json``: per round the test accuracy of each, the answer's
metrics and served-model digest of each, and the wall time of each. The models are
compared by digest: the runtimes agree when the digests are equal.

    .venv/bin/python bench/serve/runtimes.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMMON = ["num_clients=3", "seed=0", "serve.rounds=4", "unlearn.recovery_rounds=2",
          "serve.schedule=[{round:2,request:{kind:class,client:0,cls:3}}]"]


def serve(run_dir: Path, extra: list[str]) -> dict:
    """Run ``fedunlearn serve`` into ``run_dir``; its rounds, answer and wall time."""
    command = [str(BIN / "fedunlearn"), "serve", *COMMON, *extra, f"hydra.run.dir={run_dir}"]
    print(shlex.join(command[1:]), flush=True)
    started = time.perf_counter()
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{run_dir.name} failed (exit {done.returncode}); see its log")
    summary = json.loads((run_dir / "serve.json").read_text())
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (answer,) = summary["answered"]
    return {
        "command": shlex.join(["fedunlearn", *command[1:]]),
        "wall_seconds": wall,
        "test_accuracy_by_round": [r["evaluation"].get("test_accuracy") if r.get("evaluation")
                                   else None for r in rounds if r["phase"] == "serve"],
        "final_test_accuracy": summary["test_accuracy"],
        "answered_in_round": answer["answered_in_round"],
        "metrics_after": answer["metrics_after"],
        "served_model": answer["served_model"],
    }


def main() -> None:
    """Run both, compare, write ``runtimes.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench-serve" / "runtimes")
    args = parser.parse_args()
    from fedunlearn.runtime.processes import free_ports

    args.out.mkdir(parents=True, exist_ok=True)
    link, node = free_ports(2)
    results = {
        "simulation": serve(args.out / "simulation", []),
        "deployment": serve(args.out / "deployment",
                            ["runtime=deployment", f"runtime.superlink_port={link}",
                             f"runtime.clientappio_base_port={node}",
                             f"runtime.flwr_home={args.out / 'flwr'}"]),
    }
    sim, dep = results["simulation"], results["deployment"]
    results["same_served_model"] = sim["served_model"] == dep["served_model"]
    results["max_metric_difference"] = max(
        abs(sim["metrics_after"][k] - dep["metrics_after"][k]) for k in sim["metrics_after"]
        if k in dep["metrics_after"])
    path = Path(__file__).with_name("runtimes.json")
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}), path)


if __name__ == "__main__":
    main()
