"""Scale: the live federation (``fedunlearn serve``) at 10, 100 and 1,000 virtual clients.

Each point runs ``fedunlearn serve`` (Flower's Ray simulation) in a process group of its
own, on the embedded MNIST digits repeated with shifts (``dataset.train_copies``) so that
clients hold about the same number of samples at 100 and at 1,000 clients, split
Dirichlet(0.3). A client-wise request is scheduled in the last round but one and NoT
answers it. While the job runs, every ``--sample`` seconds the bench reads from ``/proc``:

- the PSS of the whole process tree (the job, Ray's GCS and raylet, every worker),
  shared pages counted once, and its peak;
- the PSS of each kind of process, among them ``flwr-simulation``, which runs the
  ServerApp (aggregation, central evaluation, the answer) and Flower's simulation engine;
- how many Ray ClientApp actors are alive.

The run's own files give round times (``metrics.jsonl``), discovery time and the
request's cost (log, ``serve.json``) and the request polls (``messages.json``).

A second part (``--fold``) measures the server's memory while it folds TIS curvature
replies of the default CNN (about 0.5 M parameters, 4 MB a reply), in a fresh process
per case: through :meth:`server.grid.CollectingGrid.stream` (each reply folded as it is
pulled) against Flower's ``send_and_receive`` list (all replies held first).

Usage: ``PYTHONPATH=. .venv/bin/python bench/scale.py --out bench/scale``; writes
``results.json``, ``RESULTS.md`` and ``scale.png`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.runs import machine  # noqa: E402
from fedunlearn.runtime.processes import descendants, stop_group  # noqa: E402

BIN = Path(sys.executable).parent
# clients, share sampled a round, train copies (about 120 samples a client at 100 and
# 1,000 clients; 10 clients hold the plain 4,000).
POINTS = {"10": (10, 1.0, 1), "100@10%": (100, 0.1, 3), "100@100%": (100, 1.0, 3),
          "1000@1%": (1000, 0.01, 30), "1000@10%": (1000, 0.1, 30),
          # The design polls replaced: every node asked for requests every round.
          "1000@10% poll-all": (1000, 0.1, 30)}
EXTRA = {"1000@10% poll-all": ["serve.poll_per_round=null"]}


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# What a process is, by the first of these found in its command line.
KINDS = (("ClientAppActor", "Ray ClientApp actors"), ("flwr-simulation", "flwr-simulation"),
         ("flower-superlink", "SuperLink"), ("flower-superexec", "SuperExec"),
         ("bin/flwr\0", "flwr CLI"), ("bin/fedunlearn\0", "launcher (fedunlearn serve)"),
         ("gcs_server", "Ray GCS"), ("raylet", "raylet"), ("ray", "other Ray processes"))


def _kind(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            line = handle.read().decode(errors="replace")
    except OSError:
        return "gone"
    return next((name for key, name in KINDS if key in line), "other")


class Sampler(threading.Thread):
    """Samples the process tree below ``root`` until stopped."""

    def __init__(self, root: int, every: float) -> None:
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.samples: list[dict] = []
        self.done = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.done.is_set():
            by_kind: dict[str, float] = {}
            kinds = []
            for pid in descendants(self.root):
                kind = _kind(pid)
                kinds.append(kind)
                pss = _kib(f"/proc/{pid}/smaps_rollup", "Pss:") / 1024
                by_kind[kind] = by_kind.get(kind, 0.0) + pss
            self.samples.append({
                "t": time.monotonic() - self.t0,
                "pss_mib": sum(by_kind.values()),
                "job_rss_mib": _kib(f"/proc/{self.root}/status", "VmRSS:") / 1024,
                "processes": len(kinds),
                "actors": kinds.count("Ray ClientApp actors"),
                "pss_by_kind_mib": by_kind,
            })
            self.done.wait(self.every)


def run_point(name: str, clients: int, fraction: float, copies: int, rounds: int,
              work: Path, every: float) -> dict:
    """``fedunlearn serve`` one point; its measurements."""
    out = work / name.replace("%", "pct").replace("@", "-").replace(" ", "-")
    request_round = rounds - 1
    args = [f"num_clients={clients}", f"dataset.train_copies={copies}", "partition=dirichlet",
            "partition.beta=0.3", f"train.fraction_train={fraction}", f"serve.rounds={rounds}",
            f"serve.schedule=[{{round: {request_round}, request: {{kind: client, client: 7}}}}]",
            "serve.method=NoT", "train.node_timeout=600", f"hydra.run.dir={out}",
            f"cache_dir={work / 'cache'}", *EXTRA.get(name, [])]
    started = time.monotonic()
    proc = subprocess.Popen([str(BIN / "fedunlearn"), "serve", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    sampler = Sampler(proc.pid, every)
    sampler.start()
    lines: list[tuple[float, str]] = []
    try:
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.rstrip()))
            print(f"  [{name}] {line.rstrip()}"[:160], flush=True)
        proc.wait()
    finally:
        sampler.done.set()
        sampler.join()
        stop_group(proc.pid, grace=5.0, leader=proc)  # Ray's helpers, should any remain
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): "
                         + " | ".join(text for _, text in lines[-5:]))
    return summarize(name, clients, fraction, copies, rounds, out, lines, sampler.samples, wall)


def summarize(name: str, clients: int, fraction: float, copies: int, rounds: int, out: Path,
              lines: list[tuple[float, str]], samples: list[dict], wall: float) -> dict:
    """One row of the table from a point's files, log and samples."""
    serve_rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    served = [r for r in serve_rounds if r["phase"] == "serve"]
    answer = json.loads((out / "serve.json").read_text())
    (request,) = answer["answered"]
    messages = json.loads((out / "messages.json").read_text())
    polls = sum(m["type"] == "query.requests" for m in messages)
    discovery = next(float(m.group(1)) for _, text in lines
                     if (m := re.search(r"\(([\d.]+) s to discover\)", text)))

    def when(pattern: str) -> float:
        return next(t for t, text in lines if re.search(pattern, text))

    # The request's window in the log: recorded, then its model served.
    asked, answered = when(r"request \S+ received"), when(r"answered by NoT")
    during = [s for s in samples if asked <= s["t"] <= answered]
    training = [s for s in samples if s["t"] < asked]

    def server(part: list[dict]) -> float | None:
        # The ServerApp runs in flwr-simulation (with Flower's simulation engine).
        return max((s["pss_by_kind_mib"].get("flwr-simulation", 0.0) for s in part),
                   default=None)

    sizes = json.loads((out / "serve.json").read_text()).get("nodes", {})
    later = [r["seconds"] for r in served[1:]] or [served[0]["seconds"]]
    return {
        "point": name, "clients": clients, "fraction": fraction,
        "sampled": max(1, round(clients * fraction)), "train_copies": copies,
        "training_samples": 4000 * copies, "nodes": len(sizes), "rounds": rounds,
        "discovery_s": discovery,
        "round_s_first": served[0]["seconds"],
        "round_s_median": statistics.median(later),
        "round_s_all": [r["seconds"] for r in served],
        "eval_s_median": statistics.median(r.get("eval_seconds", 0.0) for r in served),
        "test_accuracy": answer["test_accuracy"],
        "peak_pss_mib": max(s["pss_mib"] for s in samples),
        "peak_pss_by_kind_mib": max(samples, key=lambda s: s["pss_mib"])["pss_by_kind_mib"],
        "peak_job_rss_mib": max(s["job_rss_mib"] for s in samples),
        "request_window_s": [asked, answered],
        "peak_server_pss_training_mib": server(training),
        "peak_server_pss_answer_mib": server(during),
        "max_actors": max(s["actors"] for s in samples),
        "max_processes": max(s["processes"] for s in samples),
        "request_polls": polls, "request_polls_per_round": polls / rounds,
        "intake_s_median": (statistics.median(p["seconds"] for p in answer["request_polls"])
                            if "request_polls" in answer else None),
        "request": {"seconds": request["cost"].get("seconds"),
                    "bytes": request["cost"].get("bytes"),
                    "flops": request["cost"].get("flops"),
                    "seconds_to_receipt": request["seconds_to_receipt"],
                    "taken_in_round": request["taken_in_round"],
                    "metrics_after": request["metrics_after"]},
        "wall_s": wall, "samples": samples,
    }


# ---- the fold: server memory while curvature replies arrive ---------------------------

FOLD_CHILD = r"""
import json, sys
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from fedunlearn.models import seeded_model
from server.curvature import query_curvature
from server.grid import CollectingGrid
from flwr.supercore.task_identity import TaskIdentity

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # pose as a server
replies, mode = int(sys.argv[1]), sys.argv[2]
model = seeded_model("cnn", 10, (1, 28, 28), 0)
h = {k: torch.rand_like(v) for k, v in model.state_dict().items()}

def make(msg):
    content = RecordDict({"metrics": MetricRecord({"n-forget": 1, "n-retain": 100}),
                          "h-forget": ArrayRecord(h), "h-retain": ArrayRecord(h)})
    return Message(content, reply_to=msg)

class Trickle:  # replies made as the nodes would send them: a few per pull
    def push_messages(self, messages):
        self.queue = list(messages)
        for i, m in enumerate(self.queue):
            m.metadata.__dict__["_message_id"] = f"m{i}"
        return [m.metadata.message_id for m in self.queue]
    def pull_messages(self, ids):
        ready, self.queue = self.queue[:4], self.queue[4:]
        return [make(m) for m in ready]
    def send_and_receive(self, messages, timeout=None):  # Flower's contract: a list
        ids = self.push_messages(messages)
        out = []
        while len(out) < len(ids):
            out.extend(self.pull_messages(ids))
        return out

grid = CollectingGrid(Trickle(), 1e-4) if mode == "stream" else Trickle()
def status(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key))

base = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # peak RSS (VmHWM) starts again from the current RSS
result = query_curvature(grid, list(range(replies)), ArrayRecord(model.state_dict()),
                         ConfigRecord(), model, "mc_fisher", min_replies=replies,
                         timeout=600)
peak = status("VmHWM:")
print(json.dumps({"replies": result.replies, "mode": mode, "base_mib": base / 1024,
                  "peak_mib": peak / 1024, "added_mib": (peak - base) / 1024,
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


def fold_memory(counts: list[int]) -> list[dict]:
    """Peak RSS the fold adds, per number of replies, streamed and held as a list."""
    rows = []
    for mode in ("stream", "list"):
        for count in counts:
            done = subprocess.run([sys.executable, "-c", FOLD_CHILD, str(count), mode],
                                  cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            if done.returncode != 0:
                raise SystemExit(f"fold {count} {mode} failed: {done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  fold {mode} {count}: +{rows[-1]['added_mib']:.0f} MiB", flush=True)
    return rows


# ---- report ----------------------------------------------------------------------------

def plot(rows: list[dict], path: Path) -> None:
    """Round time and peak memory against the number of clients, per participation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    main = [r for r in rows if r["point"] not in EXTRA]
    for sampled in sorted({r["sampled"] for r in main}):
        part = sorted((r for r in main if r["sampled"] == sampled), key=lambda r: r["clients"])
        label = f"{sampled} sampled a round"
        ax_t.plot([r["clients"] for r in part], [r["round_s_median"] for r in part], "o-",
                  label=label)
        ax_m.plot([r["clients"] for r in part], [r["peak_pss_mib"] / 1024 for r in part],
                  "o-", label=label)
    for r in rows:
        if r["point"] in EXTRA:
            ax_t.plot([r["clients"]], [r["round_s_median"]], "kx", label=r["point"])
            ax_m.plot([r["clients"]], [r["peak_pss_mib"] / 1024], "kx", label=r["point"])
    ax_m.axhline(6, color="grey", linestyle=":", label="target 6 GiB")
    for ax, what in ((ax_t, "median round time (s)"), (ax_m, "peak PSS, process tree (GiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("clients in the federation")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(result: dict, out: Path) -> None:
    """RESULTS.md from results.json."""
    rows, fold = result["points"], result.get("fold", [])
    lines = [
        "# Scale: the live federation at 10, 100 and 1,000 virtual clients",
        "",
        f"Made by `{result['command']}` on {result['machine']}, "
        f"{result['date']}, commit {result['commit']}.",
        "",
        "`fedunlearn serve` in Flower's Ray simulation, one process group per point; "
        "embedded MNIST digits repeated with shifts of up to 2 pixels "
        "(`dataset.train_copies`, test part never copied) so that a client holds about "
        "120 training samples at 100 and at 1,000 clients; Dirichlet(0.3); CNN; "
        f"{rows[0]['rounds']} rounds; a client-wise request from client 7 scheduled in "
        f"round {rows[0]['rounds'] - 1}, answered by NoT (5 recovery rounds at the same "
        "participation). Memory: PSS summed over the whole process tree (the launcher, "
        "SuperLink, SuperExec, flwr-simulation, Ray's GCS, raylet and workers), sampled "
        f"every {result['sample_s']} s; server PSS = the flwr-simulation process, which "
        "runs the ServerApp (aggregation, central evaluation, the answer) and Flower's "
        "simulation engine, peak before the request and while it is answered.",
        "",
        "| point | sampled | samples | discovery s | round 1 s | median round s | "
        "test acc | peak PSS GiB | server PSS MiB (train / answer) | actors | polls/round | "
        "request s | request MB | request GFLOPs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | "
        "---: | ---: |",
    ]
    for r in rows:
        q = r["request"]
        lines.append(
            f"| {r['point']} | {r['sampled']} | {r['training_samples']:,} | "
            f"{r['discovery_s']:.1f} | {r['round_s_first']:.1f} | {r['round_s_median']:.2f} | "
            f"{100 * r['test_accuracy']:.1f} % | {r['peak_pss_mib'] / 1024:.2f} | "
            f"{r['peak_server_pss_training_mib']:.0f} / {r['peak_server_pss_answer_mib']:.0f} | "
            f"{r['max_actors']} | {r['request_polls_per_round']:.1f} | "
            f"{q['seconds']:.1f} | {q['bytes'] / 1e6:.0f} | {q['flops'] / 1e9:.0f} |")
    by = {r["point"]: r for r in rows}
    kinds = sorted({k for r in rows for k in r["peak_pss_by_kind_mib"]})
    lines += ["", "Where the peak PSS sits (MiB, at the sample of the peak):", "",
              "| point | " + " | ".join(kinds) + " |",
              "| --- | " + " | ".join("---:" for _ in kinds) + " |"]
    for r in rows:
        lines.append(f"| {r['point']} | " + " | ".join(
            f"{r['peak_pss_by_kind_mib'].get(k, 0):.0f}" for k in kinds) + " |")
    lines += ["", "## Targets", ""]
    big = by.get("1000@10%")
    if big:
        gib = big["peak_pss_mib"] / 1024
        lines.append(f"- 1,000 clients at 10 %: peak PSS {gib:.2f} GiB (target <= 6 GiB: "
                     f"{'met' if gib <= 6 else 'missed'}).")
    for large, small in (("1000@10%", "100@100%"), ("1000@1%", "100@10%")):
        if large in by and small in by:
            ratio = by[large]["round_s_median"] / by[small]["round_s_median"]
            lines.append(
                f"- Round time, {large} against {small} (both {by[large]['sampled']} sampled): "
                f"{by[large]['round_s_median']:.2f} s / {by[small]['round_s_median']:.2f} s = "
                f"{ratio:.2f}x (target <= 1.3x: {'met' if ratio <= 1.3 else 'missed'}).")
    if "1000@10%" in by and "1000@10% poll-all" in by:
        window, every = by["1000@10%"], by["1000@10% poll-all"]
        lines.append(
            f"- Request polls at 1,000 clients: {window['request_polls_per_round']:.0f} a round "
            f"with the moving window (`serve.poll_per_round=100`) against "
            f"{every['request_polls_per_round']:.0f} asking every node (`null`, the design "
            f"before); taking requests in took {window['intake_s_median']:.2f} s a round "
            f"(median) against {every['intake_s_median']:.2f} s, on top of a median training "
            f"round of {window['round_s_median']:.2f} s against {every['round_s_median']:.2f} s.")
    if fold:
        lines += ["", "## Server memory while TIS curvature replies are folded", "",
                  f"Default CNN ({fold[0]['parameters']:,} parameters; a reply holds two "
                  "float32 diagonals, 4 MB), replies made as a few arrive per pull; the peak "
                  "RSS during the query (VmHWM, reset just before) less the RSS before it, a "
                  "fresh process per case.", "",
                  "| replies | streamed (`CollectingGrid.stream`) MiB | held as a list MiB |",
                  "| ---: | ---: | ---: |"]
        for count in sorted({f["replies"] for f in fold}):
            got = {f["mode"]: f["added_mib"] for f in fold if f["replies"] == count}
            lines.append(f"| {count} | {got.get('stream', float('nan')):.0f} | "
                         f"{got.get('list', float('nan')):.0f} |")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    lines += ["", "![round time and memory against clients](scale.png)", ""]
    (out / "RESULTS.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scale")
    parser.add_argument("--points", nargs="*", default=[p for p in POINTS if p not in EXTRA],
                        choices=list(POINTS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sample", type=float, default=0.5)
    parser.add_argument("--fold", type=int, nargs="*", default=[100, 1000],
                        help="numbers of curvature replies to fold (none: skip)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedunlearn-scale"))
    parser.add_argument("--merge", action="store_true",
                        help="add to the points (and fold) already in OUT/results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    result = {"command": "PYTHONPATH=. .venv/bin/python bench/scale.py " + " ".join(sys.argv[1:]),
              "machine": machine(), "date": time.strftime("%Y-%m-%d"), "commit": commit,
              "sample_s": args.sample, "points": [], "fold": []}
    if args.merge and (args.out / "results.json").exists():
        before = json.loads((args.out / "results.json").read_text())
        result["command"] = before["command"] + " && " + result["command"]
        result["points"] = [p for p in before["points"] if p["point"] not in args.points]
        result["fold"] = before.get("fold", [])
        if before["commit"] != commit:
            result["commit"] = f"{before['commit']} (added points: {commit})"
    rows = result["points"]
    for name in args.points:
        clients, fraction, copies = POINTS[name]
        print(f"{name}: {clients} clients, {fraction:.0%} a round", flush=True)
        rows.append(run_point(name, clients, fraction, copies, args.rounds, args.work,
                              args.sample))
        # Kept as each point ends: a later failure loses no measured point.
        (args.out / "results.json").write_text(json.dumps(result, indent=1))
    rows.sort(key=lambda r: list(POINTS).index(r["point"]))
    if args.fold:
        result["fold"] = fold_memory(args.fold)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    plot(rows, args.out / "scale.png")
    write_markdown(result, args.out)
    print(f"wrote {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
