"""Benchmark of the live federation (``fedunlearn serve``): requests answered as they come.

Part 1, the timeline. A federation of ``--clients`` nodes (embedded MNIST, the NoT
CNN, IID, Flower's Ray simulation) trains for ``--rounds`` FedAvg rounds with a
backdoor attack on from the start (``attack=backdoor``: client 0 poisons 80 % of
its samples with a 3x3 white corner trigger relabelled to 0). Three requests are
scheduled: client 3 asks to forget all its data at round R/4, client 1 asks to
forget class 7 at round R/2, the attacker asks to forget its poisoned samples at
round 3R/4 (10, 20, 30 for R = 40). The run is made twice per seed: answered by
NoT (``serve.method=NoT``) and by Retrain (``serve.method=Retrain``, the
reference), both with ``serve.snapshots=true``. Every round's global model is then
scored on the test set, on each request's forget set and on the triggered test set
(attack success rate), and each request's latency, cost and gap to Retrain is read
from ``serve.json``.

Part 2, one pass against k passes. Three requests arrive at the same round of a
shorter run (a client-wise one, a class one, an instance one, from three
clients; by default at round 8 of 8, no attack): answered by NoT in one pass over
their union (``serve.one_pass=true``) or one pass each (``false``), and by Retrain
in one pass. Costs are summed over the distinct passes; the final answer of each
is scored on the union of the three forget sets, against Retrain's.

Every serve run has its own folder under ``--work``; a folder whose ``serve.json``
has ``test_accuracy`` is finished and is not run again, so a crashed benchmark
resumes with the same command. The report goes to ``--out`` (``RESULTS.md``,
``results.json``, ``curves.png``).

Usage::

    .venv/bin/python bench/serve/run.py                # the full benchmark
    .venv/bin/python bench/serve/run.py --quick        # smoke run: digits, 3 clients
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from flwr.app import ArrayRecord  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fedunlearn.config import compose  # noqa: E402
from fedunlearn.data import ForgetSet, union  # noqa: E402
from fedunlearn.digest import digest  # noqa: E402
from fedunlearn.evaluation.backdoor import backdoor_metrics  # noqa: E402
from fedunlearn.federation import Federation, build_federation  # noqa: E402
from fedunlearn.requests import materialize, scenario_request  # noqa: E402
from fedunlearn.settings import Job  # noqa: E402
from fedunlearn.training import evaluate  # noqa: E402
from server.central import CentralEvaluator  # noqa: E402
from server.evaluation import UnlearningEvaluator, eval_sets  # noqa: E402

BIN = Path(sys.executable).parent
GAP_KEYS = ("retain", "forget", "test", "mia")
COST_KEYS = ("bytes", "flops", "seconds", "rounds")


# ---- the plan ------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheduled:
    """One scheduled request: its label, the round it is planned for, its content."""

    label: str
    round: int
    content: dict[str, Any]


@dataclass
class Plan:
    """Everything the benchmark runs, from the command line."""

    seeds: list[int]
    rounds: int
    clients: int
    dataset: str
    retrain_rounds: int
    multi_rounds: int
    multi_at: int
    multi_seeds: list[int]
    multi_retrain_rounds: int
    work: Path
    out: Path
    extra: list[str] = field(default_factory=list)
    quick: bool = False
    accept_unhealthy: bool = False

    @property
    def schedule(self) -> list[Scheduled]:
        """Client-wise at R/4, class-wise at R/2, backdoor at 3R/4 (at least round 2)."""
        at = [max(2, round(self.rounds * k / 4)) for k in (1, 2, 3)]
        return [
            Scheduled("client", at[0], {"kind": "client", "client": min(3, self.clients - 1)}),
            Scheduled("class", at[1], {"kind": "class", "client": 1, "cls": 7}),
            Scheduled("backdoor", at[2], {"kind": "backdoor", "client": 0}),
        ]

    @property
    def multi_schedule(self) -> list[Scheduled]:
        """Three requests of three clients at the same round."""
        return [
            Scheduled("client", self.multi_at, {"kind": "client", "client": 1}),
            Scheduled("class", self.multi_at, {"kind": "class", "client": 0, "cls": 4}),
            Scheduled("instance", self.multi_at,
                      {"kind": "instance", "client": 2, "fraction": 0.5, "clients": [2]}),
        ]

    def base(self, seed: int) -> list[str]:
        """Overrides every run of ``seed`` shares."""
        return [f"dataset={self.dataset}", f"num_clients={self.clients}", f"seed={seed}",
                *self.extra]

    def main_overrides(self, seed: int, method: str) -> list[str]:
        return [*self.base(seed), "attack=backdoor", f"serve.rounds={self.rounds}",
                f"serve.method={method}", "serve.snapshots=true",
                f"unlearn.retrain_rounds={self.retrain_rounds}",
                schedule_override(self.schedule)]

    def multi_overrides(self, seed: int, method: str, one_pass: bool) -> list[str]:
        return [*self.base(seed), f"serve.rounds={self.multi_rounds}",
                f"serve.method={method}", f"serve.one_pass={str(one_pass).lower()}",
                f"unlearn.retrain_rounds={self.multi_retrain_rounds}",
                schedule_override(self.multi_schedule)]


def hydra_value(value: object) -> str:
    """A value in Hydra's override grammar (flow-style dicts and lists, bare words)."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def schedule_override(items: Sequence[Scheduled]) -> str:
    """``serve.schedule=[{round:R,request:{...}}, ...]``."""
    return "serve.schedule=" + hydra_value(
        [{"round": s.round, "request": s.content} for s in items])


# ---- running serve -------------------------------------------------------------------
def finished(run_dir: Path) -> bool:
    """A run is finished when its ``serve.json`` has the final test accuracy."""
    path = run_dir / "serve.json"
    if not path.exists():
        return False
    try:
        return "test_accuracy" in json.loads(path.read_text())
    except ValueError:
        return False


#: serve.log lines that make a run's numbers doubtful, by what they mean.
PROBLEMS = {
    "deletion not confirmed": re.compile(r"did not confirm deleting"),
    "round skipped": re.compile(r"\[serve\] round \d+ skipped"),
    "request failed": re.compile(r"requests .* failed$", re.MULTILINE),
    "request refused": re.compile(r"request \S+ refused: "),
    "traceback": re.compile(r"Traceback \(most recent call last\)"),
}


def runtimes_section(path: Path) -> list[str]:
    """RESULTS.md lines of ``bench/serve/runtimes.py``'s comparison, if it ran."""
    if not path.exists():
        return ["Not measured yet: run `.venv/bin/python bench/serve/runtimes.py`.", ""]
    data = json.loads(path.read_text())
    sim, dep = data["simulation"], data["deployment"]
    rows = ["| round | simulation test acc. | deployment test acc. |", "| --- | --- | --- |"]
    for rnd, (a, b) in enumerate(zip(sim["test_accuracy_by_round"],
                                     dep["test_accuracy_by_round"], strict=True), start=1):
        rows.append(f"| {rnd} | {100 * a:.2f} | {100 * b:.2f} |")
    return [
        "The same short live federation (3 clients, 4 rounds, a class-wise request at "
        "round 2, NoT) in the Ray simulation and on a real SuperLink with 3 SuperNodes "
        "(gRPC on 127.0.0.1), made by `.venv/bin/python bench/serve/runtimes.py`:", "",
        f"- simulation: `{sim['command']}`, {sim['wall_seconds']:.0f} s wall",
        f"- deployment: `{dep['command']}`, {dep['wall_seconds']:.0f} s wall",
        f"- the model served after the answer is the same in both: "
        f"**{data['same_served_model']}** (digest {sim['served_model'][:16]}... vs "
        f"{dep['served_model'][:16]}...); largest difference of the answer's metrics: "
        f"{data['max_metric_difference']:.3g} points",
        *([] if data["same_served_model"] else [
            "- not bit for bit: each run is deterministic, but the two runtimes compute "
            "in different processes (a Ray actor with `client_cpus` CPUs against a "
            "`flwr-clientapp` process with torch's default threads), which can change the "
            "order of float sums in training; not verified here which difference it is"]),
        "", *rows, ""]


def health(run_dir: Path) -> dict[str, int]:
    """Counts of the :data:`PROBLEMS` in a run's ``serve.log`` (only those found)."""
    path = run_dir / "serve.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    found = {name: len(pattern.findall(text)) for name, pattern in PROBLEMS.items()}
    return {k: v for k, v in found.items() if v}


def run_serve(run_dir: Path, overrides: list[str], accept_unhealthy: bool = False) -> dict:
    """``fedunlearn serve`` into ``run_dir`` unless it finished before; its serve.json
    with the wall seconds of the command (``bench_wall_seconds``)."""
    wall_path = run_dir / "bench-wall.json"
    given = run_dir / "bench-overrides.json"
    same = given.exists() and json.loads(given.read_text()) == overrides
    if finished(run_dir) and same:
        print(f"  {run_dir.name}: finished before, kept", flush=True)
    else:
        if run_dir.exists():  # a half-done run: its ledger would hold answered requests
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        command = [str(BIN / "fedunlearn"), "serve", *overrides, f"hydra.run.dir={run_dir}"]
        (run_dir / "command.txt").write_text(shlex.join(command) + "\n")
        given.write_text(json.dumps(overrides))
        print(f"  {run_dir.name}: {shlex.join(command[1:])}", flush=True)
        started = time.perf_counter()
        with (run_dir / "serve.log").open("w") as log:
            done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - started
        if done.returncode != 0 or not finished(run_dir):
            tail = (run_dir / "serve.log").read_text()[-4000:]
            raise SystemExit(f"{run_dir.name} failed (exit {done.returncode}):\n{tail}")
        problems = health(run_dir)
        if problems and not accept_unhealthy:
            # Numbers of a run whose nodes kept data they were told to delete (or that
            # skipped rounds, or failed a request) are not the federation's: set the run
            # aside (kept for reading) so that the next invocation runs it again.
            aside = run_dir.with_name(f"{run_dir.name}.unhealthy-{int(time.time())}")
            run_dir.rename(aside)
            raise SystemExit(f"{run_dir.name}: serve finished but its log shows "
                             f"{problems}; moved to {aside} (see its serve.log); "
                             "--accept-unhealthy keeps such runs")
        wall_path.write_text(json.dumps({"wall_seconds": wall}))
        print(f"  {run_dir.name}: {wall:.0f} s", flush=True)
    summary = json.loads((run_dir / "serve.json").read_text())
    summary["bench_wall_seconds"] = (json.loads(wall_path.read_text())["wall_seconds"]
                                     if wall_path.exists() else None)
    summary["bench_health"] = health(run_dir)
    return summary


def metrics_lines(run_dir: Path) -> list[dict]:
    """``metrics.jsonl`` of a run."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- scoring models ------------------------------------------------------------------
class Scorer:
    """Scores global models of one config: test accuracy, accuracy on each request's
    forget set, attack success rate; and the full request evaluation of the server
    (retain, forget, test, MIA) on a given forget set.

    The federation and the forget sets are rebuilt from the same config as the serve
    run (every party derives the same partitions from it), the requests with the
    content and seed ``serve`` gives them.
    """

    def __init__(self, overrides: list[str], schedule: Sequence[Scheduled]) -> None:
        self.cfg = compose(overrides)
        self.job = Job.from_config(self.cfg)
        self.federation: Federation = build_federation(self.cfg)
        self.device = torch.device("cpu")
        self.model = self.job.build_model(self.federation).to(self.device)
        self.batch = self.job.train.eval_batch_size
        fed = self.federation
        labels = fed.splits.train.labels.numpy()
        self.forget: dict[str, ForgetSet] = {}
        for item in schedule:
            request = scenario_request({"seed": self.job.seed, **item.content})
            self.forget[item.label] = materialize(request, fed.train_ids, labels, fed.poisoned)
        self.forget_data = {k: fed.splits.train.subset(v.all_ids) for k, v in self.forget.items()}
        # The attack's trigger exactly as the server's request evaluation adds it.
        self.trigger = None
        if self.job.backdoor is not None:
            poisoned = materialize(
                scenario_request({"seed": self.job.seed, "kind": "backdoor",
                                  "client": int(self.cfg.attack.client)}),
                fed.train_ids, labels, fed.poisoned)
            setup = eval_sets(self.job, fed, poisoned).backdoor
            assert setup is not None
            self.trigger = (int(setup["target"]), setup["trigger"])

    def load(self, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        self.model.load_state_dict(state)
        return self.model

    def score(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Test accuracy, forget accuracy per request, ASR (all in percent)."""
        model = self.load(state)
        test = self.federation.splits.test
        out = {"test": 100 * evaluate(model, test.images, test.labels, batch_size=self.batch,
                                      device=self.device).accuracy}
        for label, data in self.forget_data.items():
            out[f"forget_{label}"] = 100 * evaluate(model, data.images, data.labels,
                                                    batch_size=self.batch,
                                                    device=self.device).accuracy
        if self.trigger is not None:
            target, trigger = self.trigger
            bd = backdoor_metrics(model, test.images, test.labels, target=target,
                                  trigger=trigger, batch_size=self.batch, device=self.device)
            out["asr"], out["backdoor_acc"] = bd["asr"], bd["backdoor_acc"]
        return out

    def full(self, state: Mapping[str, torch.Tensor], forget: ForgetSet) -> dict[str, float]:
        """The server's own request evaluation (retain, forget, test, MIA, ...)."""
        central = CentralEvaluator(self.job, self.federation)
        evaluator = UnlearningEvaluator(self.job, self.federation, central,
                                        eval_sets(self.job, self.federation, forget))
        return dict(evaluator(0, ArrayRecord(dict(state))))


def load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")


def answer_model(run_dir: Path, answered: dict) -> dict[str, torch.Tensor]:
    """The model a request's answer served (checked against serve.json's digest)."""
    state = load_state(run_dir / "unlearned" / answered["request"] / f"{answered['method']}.pt")
    if digest(state) != answered["served_model"]:
        raise SystemExit(f"{run_dir}: the saved model of {answered['request']} is not the "
                         f"one serve.json says was served")
    return state


def score_timeline(run_dir: Path, scorer: Scorer, summary: dict,
                   schedule: Sequence[Scheduled]) -> list[dict]:
    """Score every round's snapshot (x = round) and every answer's served model
    (x = round - 0.5: adopted at the start of the round, before it trained).

    Cached in ``run_dir/bench-scores.json``.
    """
    cache = run_dir / "bench-scores.json"
    if cache.exists():
        return json.loads(cache.read_text())
    points = []
    test_log = {m["round"]: m.get("evaluation", {}).get("test_accuracy")
                for m in metrics_lines(run_dir) if m.get("phase") == "serve"}
    for path in sorted((run_dir / "rounds").glob("*.pt")):
        rnd = int(path.stem)
        point = {"x": float(rnd), "round": rnd, "what": "round",
                 **scorer.score(load_state(path))}
        if test_log.get(rnd) is not None:  # the server's own evaluation of the same model
            point["server_test"] = 100 * test_log[rnd]
        points.append(point)
    kinds = {s.content["kind"]: s.label for s in schedule}
    for answered in summary["answered"]:
        rnd = answered["answered_in_round"]
        points.append({"x": rnd - 0.5, "round": rnd, "what": "answer",
                       "request": kinds.get(answered["kind"], answered["kind"]),
                       **scorer.score(answer_model(run_dir, answered))})
    points.sort(key=lambda p: p["x"])
    cache.write_text(json.dumps(points, indent=1))
    return points


# ---- reading serve.json --------------------------------------------------------------
def by_label(summary: dict, schedule: Sequence[Scheduled]) -> dict[str, dict]:
    """serve.json's answered requests by the schedule's labels (kinds are unique)."""
    kinds = {s.content["kind"]: s.label for s in schedule}
    out = {}
    for answered in summary["answered"]:
        out[kinds[answered["kind"]]] = answered
    missing = [s.label for s in schedule if s.label not in out]
    if missing:
        raise SystemExit(f"serve.json lacks the answers to {missing}: {summary['answered']}")
    return out


def latency(answered: dict, planned_round: int) -> dict:
    """Rounds and seconds from record to receipt."""
    return {"planned_round": planned_round,
            "taken_in_round": answered["taken_in_round"],
            "answered_in_round": answered["answered_in_round"],
            "rounds_taken_to_answered": answered["answered_in_round"] - answered["taken_in_round"],
            "rounds_planned_to_answered": answered["answered_in_round"] - planned_round,
            "seconds_to_receipt": answered["seconds_to_receipt"],
            "recorded": answered["recorded"], "receipt_finished": answered["receipt_finished"]}


def gap(metrics: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """|Δ| per metric (percentage points) and their mean (NoT's average gap)."""
    out = {k: abs(float(metrics[k]) - float(reference[k])) for k in GAP_KEYS
           if k in metrics and k in reference}
    out["avg"] = float(np.mean([out[k] for k in GAP_KEYS if k in out])) if out else float("nan")
    return out


def pick(metrics: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: metrics[k] for k in keys if k in metrics}


def pass_costs(summary: dict) -> dict:
    """Cost summed over the distinct passes of a run's answers."""
    passes: dict[tuple[str, ...], dict] = {}
    for answered in summary["answered"]:
        passes.setdefault(tuple(answered["shared_pass"]), answered["cost"])
    total = {k: float(sum(c.get(k, 0) for c in passes.values())) for k in COST_KEYS}
    return {"passes": len(passes), **total,
            "per_pass": [{"requests": list(k), **pick(c, COST_KEYS)} for k, c in passes.items()]}


# ---- statistics and tables -----------------------------------------------------------
def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return float(np.mean(vals)), std, len(vals)


def fmt(values: Sequence[float | None], digits: int = 2, sci: bool = False) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "–"
    if sci:
        return f"{mean:.2e}" + (f" ± {std:.1e}" if n > 1 else "")
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


# ---- the plot ------------------------------------------------------------------------
def plot_timeline(path: Path, timelines: dict[str, list[list[dict]]],
                  schedule: Sequence[Scheduled], title: str) -> None:
    """Test accuracy, forget accuracy of each request's set and ASR over rounds, mean ±
    std over seeds, one line style per method; the requests marked."""
    panels = [("test", ["test"], "Test accuracy (%)")]
    panels.append(("forget", [f"forget_{s.label}" for s in schedule],
                   "Forget-set accuracy (%)"))
    if any("asr" in p for runs in timelines.values() for run in runs for p in run):
        panels.append(("asr", ["asr"], "Attack success rate (%)"))
    figure = Figure(figsize=(9, 3.0 * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True)
    colors = {"test": "black", "asr": "tab:red"}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for i, s in enumerate(schedule):
        colors[f"forget_{s.label}"] = palette[i % len(palette)]
    styles = {"NoT": "-", "Retrain": "--"}
    for ax, (_, keys, ylabel) in zip(axes, panels, strict=True):
        for method, runs in timelines.items():
            xs = sorted({p["x"] for run in runs for p in run})
            for key in keys:
                series = [[next((p.get(key) for p in run if p["x"] == x), None) for run in runs]
                          for x in xs]
                stats = [mean_std(v) for v in series]
                mean = np.array([s[0] for s in stats])
                std = np.array([s[1] for s in stats])
                label = key.replace("forget_", "forget set: ") + f" ({method})"
                ax.plot(xs, mean, styles.get(method, ":"), color=colors[key], label=label,
                        linewidth=1.4 if method == "NoT" else 1.0)
                if len(runs) > 1:
                    ax.fill_between(xs, mean - std, mean + std, color=colors[key], alpha=0.15,
                                    linewidth=0)
        for s in schedule:
            ax.axvline(s.round - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel(ylabel)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncol=2)
    top = axes[0]
    for s in schedule:
        top.text(s.round - 0.5, 104, f"{s.label} request (round {s.round})", fontsize=7,
                 ha="center", va="bottom")
    axes[-1].set_xlabel("round (answers at round − 0.5: adopted before the round trains)")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=110)


# ---- the machine ---------------------------------------------------------------------
def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        nproc = os.cpu_count()
    return {"nproc": nproc, "cpu": cpu, "arch": platform.machine(),
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def machine_line(m: dict) -> str:
    gpu = f"GPU {m['gpu']}" if m["gpu"] else "no GPU"
    return (f"`nproc` = {m['nproc']}, {m['cpu']} ({m['arch']}), {gpu}, torch {m['torch']}, "
            f"Python {m['python']}")


# ---- the benchmark -------------------------------------------------------------------
def timeline_part(plan: Plan, results: dict) -> None:
    """Part 1: per seed the NoT and Retrain runs, their timelines and the requests."""
    schedule = plan.schedule
    part = results.setdefault("timeline", {"runs": {}, "requests": {}})
    for seed in plan.seeds:
        print(f"timeline, seed {seed}", flush=True)
        scorer = None
        for method in ("NoT", "Retrain"):
            run_dir = plan.work / f"timeline-{method}-seed{seed}"
            overrides = plan.main_overrides(seed, method)
            summary = run_serve(run_dir, overrides, plan.accept_unhealthy)
            if scorer is None:
                scorer = Scorer(overrides, schedule)
            started = time.perf_counter()
            points = score_timeline(run_dir, scorer, summary, schedule)
            # Cross-check: the answer's model scored here against its receipt.
            checks = []
            for point in (p for p in points if p["what"] == "answer"):
                after = by_label(summary, schedule)[point["request"]]["metrics_after"]
                for mine, theirs in (("test", "test"), (f"forget_{point['request']}", "forget"),
                                     ("asr", "asr")):
                    if mine in point and theirs in after:
                        checks.append(abs(point[mine] - float(after[theirs])))
            part["runs"][f"{method} seed {seed}"] = {
                "method": method, "seed": seed, "dir": str(run_dir),
                "overrides": overrides, "wall_seconds": summary["bench_wall_seconds"],
                "serve_seconds": summary.get("seconds"), "health": summary["bench_health"],
                "final_test_accuracy": 100 * summary["test_accuracy"],
                "scoring_seconds": time.perf_counter() - started,
                "receipt_check_max_diff": max(checks) if checks else None,
                "forget_sizes": {k: int(len(v.all_ids)) for k, v in scorer.forget.items()},
                "timeline": points,
                "answered": summary["answered"]}
        not_run = by_label(part["runs"][f"NoT seed {seed}"], schedule)
        ref_run = by_label(part["runs"][f"Retrain seed {seed}"], schedule)
        for s in schedule:
            mine, ref = not_run[s.label], ref_run[s.label]
            part["requests"][f"{s.label} seed {seed}"] = {
                "request": s.label, "seed": seed, "content": s.content,
                "latency": {"NoT": latency(mine, s.round), "Retrain": latency(ref, s.round)},
                "cost": {"NoT": pick(mine["cost"], COST_KEYS),
                         "Retrain": pick(ref["cost"], COST_KEYS)},
                "metrics_before": {"NoT": mine["metrics_before"],
                                   "Retrain": ref["metrics_before"]},
                "metrics_after": {"NoT": mine["metrics_after"], "Retrain": ref["metrics_after"]},
                "gap_to_retrain": gap(mine["metrics_after"], ref["metrics_after"]),
            }


def multi_part(plan: Plan, results: dict) -> None:
    """Part 2: three simultaneous requests, one pass against k passes."""
    schedule = plan.multi_schedule
    part = results.setdefault("multi", {"runs": {}})
    variants = [("NoT one-pass", "NoT", True), ("NoT k-pass", "NoT", False),
                ("Retrain one-pass", "Retrain", True)]
    for seed in plan.multi_seeds:
        print(f"one pass against k passes, seed {seed}", flush=True)
        scorer = None
        for name, method, one_pass in variants:
            run_dir = plan.work / f"multi-{method}-{'one' if one_pass else 'k'}pass-seed{seed}"
            overrides = plan.multi_overrides(seed, method, one_pass)
            summary = run_serve(run_dir, overrides, plan.accept_unhealthy)
            if scorer is None:
                scorer = Scorer(overrides, schedule)
            by_label(summary, schedule)  # all three answered
            last = summary["answered"][-1]  # adoption order: the last pass's model is served
            cache = run_dir / "bench-union.json"
            if cache.exists():
                union_metrics = json.loads(cache.read_text())
            else:
                union_metrics = scorer.full(answer_model(run_dir, last),
                                            union(list(scorer.forget.values())))
                cache.write_text(json.dumps(union_metrics))
            part["runs"][f"{name} seed {seed}"] = {
                "variant": name, "method": method, "one_pass": one_pass, "seed": seed,
                "dir": str(run_dir), "overrides": overrides,
                "wall_seconds": summary["bench_wall_seconds"], "health": summary["bench_health"],
                "final_test_accuracy": 100 * summary["test_accuracy"],
                "cost": pass_costs(summary),
                "union_size": int(sum(len(v.all_ids) for v in scorer.forget.values())),
                "union_metrics": union_metrics,
                "per_request": {lbl: {"shared_pass": a["shared_pass"],
                                      "latency": latency(a, plan.multi_at),
                                      "metrics_after": a["metrics_after"]}
                                for lbl, a in by_label(summary, schedule).items()},
            }
        ref = part["runs"][f"Retrain one-pass seed {seed}"]["union_metrics"]
        for name, _, _ in variants:
            run = part["runs"][f"{name} seed {seed}"]
            run["gap_to_retrain"] = gap(run["union_metrics"], ref)


def summarize(plan: Plan, results: dict) -> None:
    """Mean ± std over seeds of the per-request numbers (into results['summary'])."""
    summary: dict[str, Any] = {}
    reqs = results.get("timeline", {}).get("requests", {})
    for s in plan.schedule:
        rows = [r for r in reqs.values() if r["request"] == s.label]
        if not rows:
            continue
        entry: dict[str, Any] = {"n": len(rows)}
        for method in ("NoT", "Retrain"):
            entry[method] = {
                "after": {k: mean_std([r["metrics_after"][method].get(k) for r in rows])[:2]
                          for k in (*GAP_KEYS, "asr")},
                "cost": {k: mean_std([r["cost"][method].get(k) for r in rows])[:2]
                         for k in COST_KEYS},
                "seconds_to_receipt": mean_std(
                    [r["latency"][method]["seconds_to_receipt"] for r in rows])[:2]}
        entry["gap"] = {k: mean_std([r["gap_to_retrain"].get(k) for r in rows])[:2]
                        for k in (*GAP_KEYS, "avg")}
        summary[s.label] = entry
    results["summary"] = summary


def report(plan: Plan, results: dict, command: str) -> str:
    """RESULTS.md."""
    m = results["machine"]
    sched = plan.schedule
    lines = ["# The live federation: `fedunlearn serve`", "",
             f"- **Command**: `{command}`",
             f"- **Machine**: {machine_line(m)}",
             f"- **Date**: {results['date']}",
             f"- **Setting**: {plan.dataset}, {plan.clients} IID clients, the NoT CNN, "
             "Flower's Ray simulation, conf/ defaults otherwise (1 local epoch, lr 0.01, "
             f"NoT with {results['config']['recovery_rounds']} fixed recovery rounds); "
             f"`attack=backdoor` (client {results['config']['attack_client']} poisons "
             f"{results['config']['attack_fraction']:.0%} of its samples, 3x3 trigger, "
             f"target {results['config']['attack_target']}) from the start.",
             f"- **Timeline**: {plan.rounds} rounds, seeds {plan.seeds}; "
             + "; ".join(f"round {s.round}: {s.label} request {s.content}" for s in sched),
             f"- **Retrain reference**: the same serve run with `serve.method=Retrain`, "
             f"`unlearn.retrain_rounds={plan.retrain_rounds}` (the rounds trained before "
             f"the first request), at every request: the Retrain model is trained from the "
             f"initial weights on everything not forgotten so far, for "
             f"{plan.retrain_rounds} rounds, while NoT's model at request k has trained "
             f"for {sched[0].round - 1}, {sched[1].round - 1}, {sched[2].round - 1} "
             "rounds.",
             f"- **Wall time**: {results['wall_seconds']:.0f} s for this invocation; the "
             f"serve runs took {results['serve_wall_seconds']:.0f} s in all "
             "(each run's own wall time, kept when a restarted benchmark reuses it).",
             ""]
    tl = results.get("timeline", {})
    if tl.get("runs"):
        lines += ["## Timeline", "",
                  "![curves](curves.png)", "",
                  "Every round's global model (after the round's training, "
                  "`serve.snapshots=true`) and every answer's served model (drawn at "
                  "round − 0.5: it is adopted at the start of the round, before the round "
                  "trains), scored on the test set, on each request's forget set (the "
                  "training samples it names, with the labels they were trained with: the "
                  "backdoor set carries the target label) and on the triggered test images "
                  "of other classes (ASR). Solid: NoT; dashed: Retrain; mean ± std over "
                  "seeds.", ""]
        pts = {k: v["timeline"] for k, v in tl["runs"].items()}
        checks = [abs(p["test"] - p["server_test"]) for t in pts.values() for p in t
                  if "server_test" in p]
        receipts = [v["receipt_check_max_diff"] for v in tl["runs"].values()
                    if v.get("receipt_check_max_diff") is not None]
        if checks:
            lines += [f"Checks: the test accuracy scored here and the server's own "
                      f"evaluation in `metrics.jsonl` differ by at most {max(checks):.3f} "
                      f"points over {len(checks)} rounds"
                      + (f"; the answers' test, forget and ASR scored here and in their "
                         f"receipts by at most {max(receipts):.3f} points." if receipts
                         else "."), ""]
        rows = []
        for s in sched:
            for method in ("NoT", "Retrain"):
                runs = [v for v in tl["runs"].values() if v["method"] == method]

                def at(x: float, key: str, runs: list = runs) -> list:
                    return [next((p.get(key) for p in r["timeline"] if p["x"] == x), None)
                            for r in runs]
                before, answer, after = s.round - 1, s.round - 0.5, s.round
                rows.append([s.label, method,
                             fmt(at(before, f"forget_{s.label}"), 1),
                             fmt(at(answer, f"forget_{s.label}"), 1),
                             fmt(at(after, f"forget_{s.label}"), 1),
                             fmt(at(float(plan.rounds), f"forget_{s.label}"), 1),
                             fmt(at(before, "test"), 1), fmt(at(answer, "test"), 1),
                             fmt(at(float(plan.rounds), "test"), 1),
                             fmt(at(before, "asr"), 1), fmt(at(answer, "asr"), 1),
                             fmt(at(float(plan.rounds), "asr"), 1)])
        lines += ["Around each request (percent): the model before the request (after "
                  "round r − 1), the answer, after round r, and at the end.", ""]
        lines += table(["request", "method", "forget r−1", "forget answer", "forget r",
                        "forget end", "test r−1", "test answer", "test end", "ASR r−1",
                        "ASR answer", "ASR end"], rows)
        lines.append("")
    summ = results.get("summary", {})
    if summ:
        lines += ["## Latency", "",
                  "Rounds from the round the request was taken in (and from the round the "
                  "schedule planned) to the round it was answered in, and seconds from its "
                  "record in the ledger to its sealed receipt (both kept to the millisecond).", ""]
        rows = []
        for r in tl["requests"].values():
            for method in ("NoT", "Retrain"):
                lat = r["latency"][method]
                rows.append([r["request"], str(r["seed"]), method, str(lat["planned_round"]),
                             str(lat["taken_in_round"]), str(lat["answered_in_round"]),
                             str(lat["rounds_taken_to_answered"]),
                             str(lat["rounds_planned_to_answered"]),
                             f"{lat['seconds_to_receipt']:.0f}"
                             if lat["seconds_to_receipt"] is not None else "–"])
        lines += table(["request", "seed", "method", "planned", "taken", "answered",
                        "rounds taken→answered", "rounds planned→answered",
                        "s record→receipt"], rows)
        lines += ["", "## Gap to Retrain and cost per request", "",
                  "After-metrics of each request (the server's evaluation in the receipt: "
                  "retain = every training sample but this request's forget set, MIA = "
                  "attacker accuracy on forget vs test samples), mean ± std over seeds; "
                  "gap = |NoT − Retrain| in points, Avg = mean of the four.", ""]
        rows = []
        for label, e in summ.items():
            for method in ("NoT", "Retrain"):
                a, c = e[method]["after"], e[method]["cost"]
                rows.append([label, method, *(_ms(a[k]) for k in (*GAP_KEYS, "asr")),
                             _ms(c["bytes"], sci=True), _ms(c["flops"], sci=True),
                             _ms(c["seconds"], 1), _ms(c["rounds"], 1),
                             _ms(e[method]["seconds_to_receipt"], 0)])
            g = e["gap"]
            rows.append([label, "**gap**", *(_ms(g[k]) for k in GAP_KEYS), "", "", "", "",
                         "", f"Avg {_ms(g['avg'])}"])
        lines += table(["request", "method", "retain", "forget", "test", "MIA", "ASR",
                        "bytes", "FLOPs", "s", "rounds", "s to receipt"], rows)
        lines.append("")
    mp = results.get("multi", {}).get("runs", {})
    if mp:
        ms = plan.multi_schedule
        lines += ["## One pass against k passes", "",
                  f"{plan.multi_rounds} rounds, no attack, seeds {plan.multi_seeds}; three "
                  f"requests at round {plan.multi_at}: "
                  + "; ".join(f"{s.label} {s.content}" for s in ms)
                  + f". Retrain with `unlearn.retrain_rounds={plan.multi_retrain_rounds}` "
                  "(the rounds trained before the requests). Cost summed over the "
                  "distinct passes. The final answer of each run (the model served after "
                  "all three) is scored by the server's evaluation on the union of the "
                  "three forget sets; gap = |run − Retrain one-pass|.", ""]
        rows = []
        for name in ("NoT one-pass", "NoT k-pass", "Retrain one-pass"):
            runs = [v for v in mp.values() if v["variant"] == name]
            if not runs:
                continue
            u = [r["union_metrics"] for r in runs]
            rows.append([name, fmt([r["cost"]["passes"] for r in runs], 0),
                         fmt([r["cost"]["bytes"] for r in runs], sci=True),
                         fmt([r["cost"]["flops"] for r in runs], sci=True),
                         fmt([r["cost"]["seconds"] for r in runs], 1),
                         fmt([r["cost"]["rounds"] for r in runs], 0),
                         *(fmt([x.get(k) for x in u]) for k in GAP_KEYS),
                         fmt([r["gap_to_retrain"]["avg"] for r in runs])])
        lines += table(["run", "passes", "bytes", "FLOPs", "s", "rounds", "retain",
                        "forget", "test", "MIA", "avg gap"], rows)
        lines.append("")
    lines += ["## Deployment (3 SuperNodes)", ""]
    lines += runtimes_section(Path(__file__).with_name("runtimes.json"))
    runs = {k: v for part in ("timeline", "multi")
            for k, v in results.get(part, {}).get("runs", {}).items()}
    unhealthy = {k: v["health"] for k, v in runs.items() if v.get("health")}
    notes = list(results.get("notes", []))
    notes.append("serve logs: " + (
        "every run clean (no unconfirmed deletion, skipped round, failed or refused "
        "request, traceback)" if not unhealthy else f"problems kept: {unhealthy}"))
    notes.append("Wall seconds of each serve run: " + ", ".join(
        f"{k} {v['wall_seconds']:.0f}" for k, v in runs.items() if v.get("wall_seconds")))
    lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _ms(pair: Sequence[float], digits: int = 2, sci: bool = False) -> str:
    mean, std = pair
    if not np.isfinite(mean):
        return "–"
    if sci:
        return f"{mean:.2e}" + (f" ± {std:.1e}" if std else "")
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--dataset", default="mnist_embedded")
    parser.add_argument("--retrain-rounds", type=int, default=None,
                        help="Retrain's rounds in the timeline (default: the rounds "
                             "trained before the first request)")
    parser.add_argument("--multi-rounds", type=int, default=8,
                        help="serve.rounds of the one-pass/k-pass runs (default 8: the "
                             "run ends with the round the requests come in; later rounds "
                             "enter none of that part's numbers)")
    parser.add_argument("--multi-at", type=int, default=8)
    parser.add_argument("--multi-seeds", type=int, nargs="*", default=None,
                        help="seeds of the one-pass/k-pass part (default: --seeds; "
                             "none: skip it)")
    parser.add_argument("--skip-timeline", action="store_true")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-serve",
                        help="one folder per serve run (kept; finished runs are reused)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default bench/serve; --quick: WORK/quick/report)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: digits, 3 clients, 8 rounds, seed 0, a 3-round "
                             "one-pass part with the requests at round 2")
    parser.add_argument("--accept-unhealthy", action="store_true",
                        help="keep serve runs whose log shows unconfirmed deletions, "
                             "skipped rounds or failed requests (default: set them aside "
                             "and stop)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    command = ".venv/bin/python bench/serve/run.py " + shlex.join(sys.argv[1:])
    if args.quick:
        args.dataset, args.clients = "digits", 3
        if "--rounds" not in sys.argv:
            args.rounds = 8
        if "--seeds" not in sys.argv:
            args.seeds = [0]
        if "--multi-rounds" not in sys.argv:
            args.multi_rounds = 3
        if "--multi-at" not in sys.argv:
            args.multi_at = 2
    work = args.work / ("quick" if args.quick else "full")
    out = args.out or (args.work / "quick" / "report" if args.quick else ROOT / "bench" / "serve")
    plan = Plan(seeds=args.seeds, rounds=args.rounds, clients=args.clients,
                dataset=args.dataset, retrain_rounds=0, multi_rounds=args.multi_rounds,
                multi_at=args.multi_at,
                multi_seeds=args.seeds if args.multi_seeds is None else args.multi_seeds,
                multi_retrain_rounds=max(1, args.multi_at - 1), work=work, out=out,
                extra=list(args.overrides), quick=args.quick,
                accept_unhealthy=args.accept_unhealthy)
    plan.retrain_rounds = args.retrain_rounds or max(1, plan.schedule[0].round - 1)
    if not 1 <= plan.multi_at <= plan.multi_rounds:
        parser.error("--multi-at must be in 1..--multi-rounds")
    # Check every config before the first run (compose validates; bad input stops here).
    for seed in plan.seeds:
        for method in ("NoT", "Retrain"):
            compose(plan.main_overrides(seed, method))
    for seed in plan.multi_seeds:
        compose(plan.multi_overrides(seed, "NoT", False))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cfg = compose(plan.main_overrides(plan.seeds[0], "NoT"))
    results: dict[str, Any] = {
        "command": command, "machine": machine(),
        "plan": {"seeds": plan.seeds, "rounds": plan.rounds, "clients": plan.clients,
                 "dataset": plan.dataset, "retrain_rounds": plan.retrain_rounds,
                 "schedule": [vars(s) for s in plan.schedule],
                 "multi_rounds": plan.multi_rounds, "multi_at": plan.multi_at,
                 "multi_seeds": plan.multi_seeds,
                 "multi_retrain_rounds": plan.multi_retrain_rounds,
                 "multi_schedule": [vars(s) for s in plan.multi_schedule],
                 "extra_overrides": plan.extra, "work": str(work)},
        "config": {"recovery_rounds": int(cfg.unlearn.recovery_rounds),
                   "attack_client": int(cfg.attack.client),
                   "attack_fraction": float(cfg.attack.fraction),
                   "attack_target": int(cfg.attack.target)},
        "notes": [],
    }
    notes = results["notes"]
    notes.append(f"Retrain's rounds: `unlearn.retrain_rounds` is one number for every "
                 f"request of a run; {plan.retrain_rounds} is what the federation had "
                 "trained when the first request came. Later requests compare NoT's "
                 "longer-trained model with a Retrain of that many rounds, so part of "
                 "their test/retain gap is Retrain's shorter training, not NoT's error.")
    if plan.multi_rounds == plan.multi_at:
        notes.append(f"One pass against k passes: the runs end with round {plan.multi_at}, "
                     "the round the requests come in (answered before it trains); the "
                     "rounds a longer run would train after it enter none of that part's "
                     "numbers, so they were cut to save time.")
    if plan.multi_seeds != plan.seeds:
        notes.append(f"One pass against k passes ran on seeds {plan.multi_seeds} only "
                     f"(the timeline on {plan.seeds}), to keep the total within budget.")

    def write() -> None:
        results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["wall_seconds"] = time.perf_counter() - started
        results["serve_wall_seconds"] = sum(
            run.get("wall_seconds") or 0.0 for part in ("timeline", "multi")
            for run in results.get(part, {}).get("runs", {}).values())
        summarize(plan, results)
        runs = results.get("timeline", {}).get("runs", {})
        if runs:
            timelines = {method: [v["timeline"] for v in runs.values() if v["method"] == method]
                         for method in ("NoT", "Retrain")}
            plot_timeline(out / "curves.png", {k: v for k, v in timelines.items() if v},
                          plan.schedule,
                          f"serve: {plan.rounds} rounds, {plan.clients} clients, "
                          f"{plan.dataset}, seeds {plan.seeds}")
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "RESULTS.md").write_text(report(plan, results, command))

    if not args.skip_timeline:
        timeline_part(plan, results)
        write()
    if plan.multi_seeds:
        multi_part(plan, results)
    write()
    print(f"wrote {out}/RESULTS.md, results.json, curves.png in "
          f"{results['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
