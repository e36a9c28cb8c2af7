"""Benchmark of the foundation: the default training run, and where a round's time goes.

Measures, on this machine, in one run:

1. the default job (``fedunlearn train``: 10 IID clients, embedded MNIST, NoT CNN) in
   Flower's Ray simulation, retrained from scratch: wall time and final test accuracy
   (targets: >= 90 % within 5 minutes on 2 cores);
2. the same number of clients for a few rounds over real SuperLink/SuperNode
   processes (``runtime=deployment``): seconds per round;
3. the reference: the same local training (same code, same data, same batches) and
   central evaluation run in one plain Python process without Flower, per round.

Flower overhead per round = round time - (training compute + evaluation) of (3).

Usage: ``.venv/bin/python bench/foundation.py [--deploy-rounds 3]``; writes
``bench/foundation.json`` and ``bench/FOUNDATION.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedunlearn.config import compose  # noqa: E402
from fedunlearn.federation import build_federation  # noqa: E402
from fedunlearn.models import seeded_model  # noqa: E402
from fedunlearn.runtime.processes import free_ports  # noqa: E402
from fedunlearn.training import evaluate, train  # noqa: E402

BIN = Path(sys.executable).parent


def run_cli(args: list[str], out: Path) -> tuple[float, dict, list[dict]]:
    """Run ``fedunlearn train ARGS`` into ``out``; return wall seconds, summary, rounds."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "fedunlearn"), "train", *args, f"hydra.run.dir={out}",
         f"cache_dir={out / 'cache'}", "reuse_trained=false"],
        capture_output=True, text=True, cwd=ROOT,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fedunlearn train {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "train.json").read_text())
    return wall, summary, summary["history"]


def reference_round(rounds: int, overrides: tuple[str, ...] = ()) -> dict:
    """Per-round seconds of the clients' local training and the central evaluation,
    sequentially in one process without Flower (the compute a round cannot avoid),
    for the default config with ``overrides``."""
    cfg = compose(list(overrides))
    fed = build_federation(cfg)
    splits = fed.splits
    model = seeded_model(cfg.model.name, splits.num_classes, splits.in_shape, int(cfg.seed))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    train_s, eval_s = [], []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        states, weights = [], []
        for pid in range(fed.num_clients):
            model.load_state_dict(state)
            data = fed.client_train(pid)
            stats = train(model, data.images, data.labels, epochs=int(cfg.train.local_epochs),
                          batch_size=int(cfg.train.batch_size), lr=float(cfg.train.lr),
                          device=torch.device("cpu"),
                          seed=int(cfg.seed) * 1_000_003 + rnd * 1009 + pid)
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(stats.num_examples)
        total = sum(weights)
        state = {k: sum(w * s[k] for w, s in zip(weights, states, strict=True)) / total
                 for k in state}
        t1 = time.perf_counter()
        model.load_state_dict(state)
        evaluate(model, splits.test.images, splits.test.labels,
                 batch_size=int(cfg.train.eval_batch_size), device=torch.device("cpu"))
        eval_s.append(time.perf_counter() - t1)
        train_s.append(t1 - t0)
    return {"train_seconds": statistics.median(train_s), "eval_seconds": statistics.median(eval_s),
            "rounds": rounds, "torch_threads": torch.get_num_threads()}


def round_stats(history: list[dict], skip_first: bool) -> dict:
    """Median and first-round seconds of a run's rounds."""
    secs = [r["seconds"] for r in history]
    steady = secs[1:] if skip_first and len(secs) > 1 else secs
    return {"first_round_seconds": secs[0], "median_round_seconds": statistics.median(steady),
            "client_train_seconds_median": statistics.median(
                r["client_metrics"]["train-seconds"] for r in history)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy-rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sim_wall, sim_summary, sim_hist = run_cli([], tmp_path / "sim")
        link, node = free_ports(2)
        dep_wall, _, dep_hist = run_cli(
            ["runtime=deployment", f"train.rounds={args.deploy_rounds}",
             f"runtime.superlink_port={link}", f"runtime.clientappio_base_port={node}"],
            tmp_path / "dep")
    ref = reference_round(3)
    compute = ref["train_seconds"] + ref["eval_seconds"]
    sim = round_stats(sim_hist, skip_first=True)
    dep = round_stats(dep_hist, skip_first=True)
    result = {
        "command": f".venv/bin/python bench/foundation.py --deploy-rounds {args.deploy_rounds}",
        "machine": {"node": platform.node(), "cpu_count": os.cpu_count(),
                    "processor": platform.machine(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "default_run": {"wall_seconds": sim_wall, "test_accuracy": sim_summary["test_accuracy"],
                        "rounds": len(sim_hist),
                        "accuracy_per_round": [r["evaluation"]["test_accuracy"] for r in sim_hist]},
        "simulation_round": {**sim, "overhead_seconds": sim["median_round_seconds"] - compute},
        "deployment_round": {**dep, "overhead_seconds": dep["median_round_seconds"] - compute,
                             "wall_seconds": dep_wall, "rounds": len(dep_hist)},
        "reference_round": ref,
    }
    (ROOT / "bench" / "foundation.json").write_text(json.dumps(result, indent=2))
    (ROOT / "bench" / "FOUNDATION.md").write_text(markdown(result))
    print(markdown(result))


def _round_row(name: str, stats: dict) -> str:
    cells = [name, f"{stats['first_round_seconds']:.1f} s",
             f"{stats['median_round_seconds']:.2f} s",
             f"{stats['client_train_seconds_median']:.2f} s", f"{stats['overhead_seconds']:.2f} s"]
    return "| " + " | ".join(cells) + " |"


def markdown(r: dict) -> str:
    """The results as the committed Markdown page."""
    d, ref, m = r["default_run"], r["reference_round"], r["machine"]
    compute = ref["train_seconds"] + ref["eval_seconds"]
    acc_ok = "met" if d["test_accuracy"] >= 0.90 else "MISSED"
    time_ok = "met" if d["wall_seconds"] <= 300 else "MISSED"
    per_round = ", ".join(f"{100 * a:.1f}" for a in d["accuracy_per_round"])
    default_row = (f"| {d['rounds']} | {100 * d['test_accuracy']:.2f} % | "
                   f"{d['wall_seconds']:.1f} s | >= 90 % ({acc_ok}), <= 300 s ({time_ok}) |")
    dep = r["deployment_round"]
    share = 100 * r["simulation_round"]["overhead_seconds"] / compute
    return f"""# Foundation benchmark

Command: `{r['command']}`
Machine: {m['cpu_count']} CPU cores ({m['processor']}), no GPU, torch {m['torch']},
Python {m['python']}; {r['date']}.

## Default run (`fedunlearn train`, 10 IID clients, embedded MNIST, NoT CNN, simulation)

Simulation is launched the default way, with `flwr run` against the job's own
simulation SuperLink (`runtime.launch=flwr-run`).

| rounds | final test accuracy | wall time (whole command) | target |
| --- | --- | --- | --- |
{default_row}

Test accuracy per round (%): {per_round}.

## Where a round's time goes (10 clients)

Reference: the same local training (same code, data and batches) and the central
evaluation, run one after another in one process without Flower: training
{ref['train_seconds']:.2f} s + evaluation {ref['eval_seconds']:.2f} s = {compute:.2f} s a round
(median of {ref['rounds']} rounds, {ref['torch_threads']} torch threads).

| runtime | first round | later rounds (median) | client train s (summed) | overhead a round |
| --- | --- | --- | --- | --- |
{_round_row("simulation (Ray)", r["simulation_round"])}
{_round_row("deployment (SuperLink + 10 SuperNodes, gRPC)", dep)}

Overhead = median round time - reference compute. In simulation Ray runs two client
apps at a time on the 2 cores (`runtime.client_cpus=1`), so the summed client train
seconds can exceed the round time. The simulation's overhead is {share:.0f} % of the
reference compute (target <= 20 %). In deployment each SuperNode's
messages run in processes forked from its warm executor (`runtime.executor=warm`), but
ten SuperNodes, their executors and the SuperLink share the 2 cores, and a SuperNode that
found no message sleeps 3 s before it asks again (`bench/deployment/RESULTS.md` splits a
message's time); that, not training, is the round time.
Deployment ran {dep['rounds']} rounds ({dep['wall_seconds']:.0f} s for the whole command,
services started and stopped included).
"""


if __name__ == "__main__":
    main()
