"""Shared plumbing of the unlearning benchmarks: run ``fedunlearn run`` per setting
and seed, gather rows and curves, and describe the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedunlearn.evaluation import write_report

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def machine() -> str:
    """One line naming the machine the numbers come from."""
    return (f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def run_setting(name: str, overrides: list[str], seed: int, work: Path,
                cache: Path) -> tuple[list[dict], list[dict], float]:
    """``fedunlearn run`` one setting and seed; return its rows, curves and wall seconds.

    Rows and curves get ``scenario = name`` so that settings sharing a scenario kind
    (client-wise on IID and on Dirichlet clients) stay apart in the report.
    """
    out = work / f"{name}-seed{seed}"
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "fedunlearn"), "run", *overrides, f"seed={seed}",
         f"cache_dir={cache}", f"hydra.run.dir={out}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{done.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    rows = [{**r, "scenario": name} for r in results["rows"]]
    curves = [{**c, "scenario": name} for c in results["curves"]]
    return rows, curves, wall


def sweep(settings: dict[str, list[str]], jobs: list[tuple[str, int]], out: Path, *,
          title: str, command: str, meta: dict,
          on_update: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Run each (setting, seed) of ``jobs`` in order; after each run rewrite
    ``out/RESULTS.md`` (with ``results.json`` and the curves), so that an interrupted
    benchmark still shows what it did. Training caches are shared within the sweep.

    Returns
    -------
    list of dict
        Every row of every run.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    curves: list[dict] = []
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, seed in jobs:
            r, c, wall = run_setting(name, settings[name], seed, work, work / "cache")
            rows += r
            curves += c
            walls[f"{name} seed {seed}"] = round(wall, 1)
            print(f"{name} seed {seed}: {wall:.0f} s", flush=True)
            if on_update:
                on_update(rows)
            full = {"command": command, "machine": machine(),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    **meta, "wall_seconds": walls}
            paths = write_report(out, rows, curves, title=title, meta=full)
            paths["report.md"].replace(out / "RESULTS.md")
    return rows


def rewrite(out: Path, title: str) -> None:
    """Write ``out/RESULTS.md`` again from ``out/results.json`` (same rows, same meta)."""
    results = json.loads((out / "results.json").read_text())
    paths = write_report(out, results["rows"], results["curves"], title=title,
                         meta=results["meta"])
    paths["report.md"].replace(out / "RESULTS.md")


if __name__ == "__main__":
    # python bench/runs.py rewrite DIR TITLE: re-render a benchmark's report.
    if len(sys.argv) == 4 and sys.argv[1] == "rewrite":
        rewrite(Path(sys.argv[2]), sys.argv[3])
    else:
        raise SystemExit("usage: python bench/runs.py rewrite DIR TITLE")


def method_sweep(script: str, doc: str, methods: str, settings: dict[str, list[str]],
                 out: Path, title: str, seeds: list[int]) -> list[dict]:
    """The command line shared by the method benchmarks: ``--seeds`` and ``--settings``,
    then one run of ``methods`` per (setting, seed) into ``out`` (:func:`sweep`).

    Parameters
    ----------
    script : str
        The benchmark's path from the repository root, for the recorded command.
    doc : str
        The benchmark's docstring; its first line is the ``--help`` description.
    methods : str
        The ``unlearn.methods=[...]`` override every run gets.
    settings : dict of str to list of str
        Each setting's own overrides, by name.
    out : Path
        The report folder.
    title : str
        The report's title.
    seeds : list of int
        The default seeds.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--settings", nargs="+", default=list(settings))
    args = parser.parse_args()
    command = (f".venv/bin/python {script} --seeds " + " ".join(map(str, args.seeds))
               + " --settings " + " ".join(args.settings))
    meta = {
        "settings": {k: " ".join(settings[k]) for k in args.settings},
        "fixed": methods + " + conf/ defaults (unlearn.recovery_rounds=5, "
                 "train.rounds=20, 10 clients, cnn, mnist_embedded)",
    }
    jobs = [(name, seed) for seed in args.seeds for name in args.settings]
    return sweep({k: [methods, *settings[k]] for k in args.settings}, jobs, out,
                 title=title, command=command, meta=meta)
