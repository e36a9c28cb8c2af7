"""TIS speed against the TIS paper's public code, at the same answer (issue 11).

On one trained ``cnn_nonorm`` and the preferential split of 5 clients (client 0 owns a
class and asks to forget all of its data, as in ``bench/tis.py``), with gamma 0.7 (the
project's default, ``conf/unlearn/method/tis.yaml``):

1. the TIS paper's public code (github.com/lorenzomanini/FedUnlearn-PE, package
   ``fisherunlearn``), imported from a checkout OUTSIDE this repository (``--peer-dir``)
   and run as its ``tester.py`` runs it: ``compute_client_information`` with the
   default ``method='diag_ggn'`` (BackPACK ``DiagGGNExact``), ``INFO_BATCH_SIZE = 15``,
   ``use_converter=False`` (what ``tester.py`` sets for its plain CNNs), then
   ``find_informative_params(info, 'information', 70)``;
2. the project's pipeline as a deployment runs it, every client in turn on this one
   machine: per client ``diagonal_curvature`` on its forget and retained parts (the
   retained part optionally a seeded sample of ``retain_samples``, seeded as
   ``client/app.py`` seeds it, the full count still reported), the server's
   ``CurvatureAccumulator`` (Eq. 30), ``tis_scores`` and ``select``; per setting of
   estimator (``diag_ggn_exact``, ``diag_ggn_mc``, ``mc_fisher`` with 1/4/16 labels),
   ``retain_samples`` and ``batch_size``.

Each pipeline's time covers curvature + scoring + selection (the model's deep copies and
BackPACK's checks included), measured as wall-clock and as process CPU time (with one
torch thread the CPU time hardly depends on what else the machine runs). Rounds of all
pipelines run one after another ("interleaved"), the order rotated every round; medians
over rounds are reported. Peak memory: growth of the process's resident set during the
call (``VmHWM`` after resetting it through ``/proc/self/clear_refs`` and handing freed
heap back with ``malloc_trim``; median over rounds), i.e. what the call allocates on top
of the model and data already held. Masks are compared with the project's exact mask
(``diag_ggn_exact``, all samples, batch 64) by Jaccard index over all parameters.

Usage::

    .venv/bin/python bench/tis_speed.py [--clients-samples 800] [--settings full]
        [--repeats 3] [--threads 1] [--peer-dir /var/tmp/tis-peer]

``--settings full`` is the issue's grid (estimators x retain_samples 0/200/100/50 x batch
64/256), ``extra`` adds exact rows at batch 16/32 and 400 retained samples, ``few`` runs
four project settings only (a smoke test); settings can also be given one by one as
``ESTIMATOR[:MC]:RETAIN:BATCH`` (e.g. ``mc_fisher:4:100:256``).
Writes ``bench/tis_speed/results.json`` and ``bench/tis_speed/RESULTS.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedunlearn.config import compose  # noqa: E402
from fedunlearn.federation import build_federation  # noqa: E402
from fedunlearn.models import seeded_model  # noqa: E402
from fedunlearn.training import train  # noqa: E402
from fedunlearn.unlearning.curvature import NONNEGATIVE, diagonal_curvature  # noqa: E402
from fedunlearn.unlearning.tis import CurvatureAccumulator, select, tis_scores  # noqa: E402

NUM_CLIENTS = 5
TARGET = 0  # the client that forgets all of its data
PEER_BATCH = 15  # tester.py: INFO_BATCH_SIZE = 15
REFERENCE = ("diag_ggn_exact", 1, 0, 64)


def sample_ids(count: int, size: int, seed: int) -> np.ndarray:
    """``client.app.sample_ids``, the client's retained sample (same draw, same seed).

    Repeated here (one line) so that the benchmark does not import the Flower client app;
    :func:`check_sample_ids` checks that both agree.
    """
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))


def check_sample_ids() -> str:
    """Compare :func:`sample_ids` with the client's own; a note for the report."""
    try:
        from client.app import sample_ids as client_ids
    except Exception as error:  # flwr missing or similar: say so, do not fail the run
        return f"client.app.sample_ids not importable ({type(error).__name__}); not compared"
    same = all(np.array_equal(sample_ids(640, k, s), client_ids(640, k, s))
               for k in (50, 100, 200) for s in range(5))
    if not same:
        raise RuntimeError("bench/tis_speed.py's sample_ids differs from client.app's")
    return "identical to client.app.sample_ids"


# ---------------------------------------------------------------------------- memory
_LIBC = ctypes.CDLL("libc.so.6")


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))


def peak_start() -> int:
    """Free garbage, hand freed heap back, reset the peak RSS; return the current RSS (KiB)."""
    gc.collect()  # BackPACK's extended copies hold reference cycles (hooks)
    _LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def peak_growth_mib(start_kib: int) -> float:
    """Peak RSS since :func:`peak_start` above its RSS then, in MiB."""
    return (_status_kib("VmHWM") - start_kib) / 1024


# ------------------------------------------------------------------------------ data
@dataclass
class Client:
    forget: tuple[Tensor, Tensor]
    retain: tuple[Tensor, Tensor]


def build_clients(per_client: int, seed: int) -> tuple[list[Client], object]:
    """The preferential split of 5 clients, ``per_client`` samples each (all of a client's
    partition, 800 on the embedded MNIST digits, or a seeded sample of it)."""
    cfg = compose([f"num_clients={NUM_CLIENTS}", "model=cnn_nonorm",
                   "partition=preferential", "scenario=client", f"seed={seed}"])
    fed = build_federation(cfg)
    train_split = fed.splits.train
    rng = np.random.default_rng(seed)
    clients = []
    for c, ids in enumerate(fed.partitions):
        ids = np.sort(ids)
        if per_client < len(ids):
            ids = np.sort(rng.choice(ids, size=per_client, replace=False))
        x, y = train_split.images[ids], train_split.labels[ids].long()
        empty = (x[:0], y[:0])
        clients.append(Client(forget=(x, y), retain=empty) if c == TARGET
                       else Client(forget=empty, retain=(x, y)))
    return clients, fed


def client_data(client: Client) -> tuple[Tensor, Tensor]:
    parts = [p for p in (client.forget, client.retain) if len(p[0])]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# ------------------------------------------------------------------------- pipelines
@dataclass(frozen=True)
class Setting:
    estimator: str
    mc_samples: int
    retain_samples: int
    batch_size: int

    @property
    def label(self) -> str:
        mc = f":{self.mc_samples}" if self.estimator in ("diag_ggn_mc", "mc_fisher") else ""
        return f"{self.estimator}{mc} r{self.retain_samples or 'all'} b{self.batch_size}"

    @classmethod
    def parse(cls, text: str) -> Setting:
        parts = text.split(":")
        if len(parts) == 3:
            parts.insert(1, "1")
        if len(parts) != 4:
            raise argparse.ArgumentTypeError(f"setting {text!r}: ESTIMATOR[:MC]:RETAIN:BATCH")
        return cls(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))


def settings_named(name: str) -> list[Setting]:
    if name == "full":
        estimators = [("diag_ggn_exact", 1), ("diag_ggn_mc", 1), ("mc_fisher", 1),
                      ("mc_fisher", 4), ("mc_fisher", 16)]
        return [Setting(e, m, r, b) for b in (64, 256) for e, m in estimators
                for r in (0, 200, 100, 50)]
    if name == "extra":
        # Beyond the grid: smaller batches (BackPACK's exact diagonal is cheapest
        # per sample near batch 32 for this CNN) and a larger retained sample.
        return [Setting("diag_ggn_exact", 1, r, b) for b in (16, 32) for r in (0, 400)] + [
            Setting("diag_ggn_exact", 1, 400, 64), Setting("diag_ggn_mc", 4, 0, 32),
            Setting("diag_ggn_mc", 4, 400, 32)]
    if name == "few":
        return [Setting(*REFERENCE), Setting("diag_ggn_mc", 1, 0, 64),
                Setting("diag_ggn_exact", 1, 100, 256), Setting("mc_fisher", 4, 100, 256)]
    return [Setting.parse(name)]


def project_pipeline(model: nn.Module, clients: list[Client], setting: Setting,
                     gamma: float, seed: int) -> tuple[dict[str, Tensor], dict]:
    """The project's TIS mask: clients' curvature (client/app.py), server's Eq. 30,
    scores and per-tensor selection (strategies/reset.py)."""
    started = time.perf_counter()
    accumulator = CurvatureAccumulator.for_model(
        model, nonnegative=setting.estimator in NONNEGATIVE)
    for c, client in enumerate(clients):
        client_seed = seed + c  # client/app.py: view.settings.seed + view.partition_id
        diags, counts = {}, {}
        for part, (x, y) in (("forget", client.forget), ("retain", client.retain)):
            counts[part] = len(x)
            if part == "retain" and 0 < setting.retain_samples < len(x):
                ids = torch.from_numpy(sample_ids(len(x), setting.retain_samples, client_seed))
                x, y = x[ids], y[ids]
            if len(x):
                diags[part] = diagonal_curvature(
                    model, x, y, estimator=setting.estimator, batch_size=setting.batch_size,
                    device="cpu", seed=client_seed, mc_samples=setting.mc_samples)
        accumulator.add(diags.get("forget"), counts["forget"], diags.get("retain"),
                        counts["retain"])
    curvature_s = time.perf_counter() - started
    h, h_prime = accumulator.result()
    mask = select(tis_scores(h, h_prime), gamma)
    return mask, {"curvature_s": curvature_s}


def load_peer(peer_dir: Path) -> object:
    """Import the peer's ``fisherunlearn`` from its checkout (with its deps beside it)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars: only helps the peer
    for path in (peer_dir / "deps", peer_dir):
        if path.is_dir() and str(path) not in sys.path:
            sys.path.insert(0, str(path))
    module = importlib.import_module("fisherunlearn")
    origin = Path(module.__file__).resolve()
    if ROOT in origin.parents:
        raise RuntimeError(f"fisherunlearn imported from inside the repository: {origin}")
    return module


def peer_pipeline(peer: object, model: nn.Module, clients: list[Client], gamma: float,
                  method: str = "diag_ggn") -> tuple[dict[str, Tensor], dict]:
    """The peer's TIS mask, as its tester.py computes it (client-wise, target client 0)."""
    datasets = [torch.utils.data.TensorDataset(*client_data(c)) for c in clients]
    started = time.perf_counter()
    peer.set_device("cpu")
    peer.set_info_batch_size(PEER_BATCH)
    info = peer.compute_client_information(TARGET, model, nn.CrossEntropyLoss(), datasets,
                                           method=method, use_converter=False)
    curvature_s = time.perf_counter() - started
    chosen = peer.find_informative_params(info, "information", 100 * gamma)
    mask = {}
    for name, param in model.named_parameters():
        selected = torch.zeros(param.shape, dtype=torch.bool)
        if name in chosen and len(chosen[name]):
            selected[tuple(chosen[name].t())] = True
        mask[name] = selected
    return mask, {"curvature_s": curvature_s}


# --------------------------------------------------------------------------- metrics
def jaccard(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else 1.0


def reset_share(mask: Mapping[str, Tensor]) -> float:
    return sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())


def same_mask(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return all(torch.equal(a[n], b[n]) for n in a)


def timed(run: Callable[[], tuple[dict[str, Tensor], dict]]) -> tuple[dict, dict]:
    start_rss = peak_start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    mask, extra = run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return mask, {"wall_s": wall, "cpu_s": cpu, "peak_mib": peak_growth_mib(start_rss),
                  **extra}


# ----------------------------------------------------------------------------- report
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(rows: dict[str, dict], peer_key: str) -> None:
    peer = rows[peer_key]
    for row in rows.values():
        for key in ("wall_s", "cpu_s", "peak_mib", "curvature_s"):
            row[key] = median([r[key] for r in row["runs"]])
        row["ratio_wall"] = peer["wall_s"] / row["wall_s"]
        row["ratio_cpu"] = peer["cpu_s"] / row["cpu_s"]
        row["meets"] = bool(row["kind"] == "project" and row["ratio_wall"] >= 2
                            and row["jaccard_exact"] >= 0.95)
        row["meets_cpu"] = bool(row["kind"] == "project" and row["ratio_cpu"] >= 2
                                and row["jaccard_exact"] >= 0.95)


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [
        "# TIS speed: this project against the TIS paper's public code",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {report['machine']}; torch {report['torch']}, backpack "
        f"{report['backpack']}, `torch.set_num_threads({report['threads']})`; 1/5/15-minute "
        f"load average before {report['load_before']}, after {report['load_after']}.  ",
        f"Peer: {report['peer']['repo']} at {report['peer']['commit']}, imported from "
        f"`{report['peer']['dir']}` (outside this repository).",
        "",
        f"Setup: `cnn_nonorm` trained centrally {report['epochs']} epochs (seed "
        f"{report['seed']}, SGD lr 0.01, momentum 0.9, batch 32) on the union of the "
        f"preferential split's {NUM_CLIENTS} clients x {report['clients_samples']} samples; "
        f"client {TARGET} (owns class {report['owned_class']}) forgets all its data; "
        f"gamma {report['gamma']}; test accuracy {report['test_accuracy']:.3f}. "
        f"{report['repeats']} timed rounds of every pipeline, "
        "interleaved (order rotated per round), after a warm-up on a few samples; medians.",
        "",
        "- time: curvature + scoring + selection, seconds (wall-clock, and process CPU "
        "time, which with 1 torch thread hardly depends on other jobs on the machine); "
        "'curv. s' the curvature part (wall).",
        "- peak MiB: growth of the resident set during the call (VmHWM reset via "
        "/proc/self/clear_refs after malloc_trim), above the model and data held already.",
        "- J exact: Jaccard index of the reset mask with the project's exact mask "
        "(diag_ggn_exact, all samples, batch 64) over all parameters; reset %: share of "
        "parameters reset.",
        "- ratio = peer time / this time (medians); target: ratio >= 2 at J exact >= 0.95.",
        "",
        "| pipeline | estimator | labels | retain samples | batch | wall s | CPU s | curv. s "
        "| peak MiB | J exact | reset % | ratio (wall) | ratio (CPU) | target |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- |",
    ]
    for row in rows:
        target = ("met" if row["meets"] and row["meets_cpu"] else
                  "met (wall only)" if row["meets"] else
                  "met (CPU only)" if row["meets_cpu"] else "-")
        if row["kind"] != "project":
            target = "reference" if row["key"] == report["peer_key"] else "-"
        mc = str(row["mc_samples"]) if row["estimator"] in ("diag_ggn_mc", "mc_fisher") else "-"
        lines.append(
            f"| {row['kind']} | {row['estimator']} | {mc} | {row['retain_samples'] or 'all'} | "
            f"{row['batch_size']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | "
            f"{row['curvature_s']:.2f} | {row['peak_mib']:.0f} | {row['jaccard_exact']:.3f} | "
            f"{100 * row['reset_share']:.2f} | {row['ratio_wall']:.2f} | "
            f"{row['ratio_cpu']:.2f} | {target} |")
    met = [r for r in rows if r["meets"] and r["meets_cpu"]]
    lines += ["", "## Verdict", ""]
    if met:
        best = max(met, key=lambda r: r["ratio_wall"])
        lines.append(f"{len(met)} setting(s) meet 'ratio >= 2 and Jaccard >= 0.95' on both "
                     f"wall-clock and CPU time; the fastest: {best['key']} "
                     f"({best['ratio_wall']:.2f}x wall, {best['ratio_cpu']:.2f}x CPU, "
                     f"J {best['jaccard_exact']:.3f}, peak {best['peak_mib']:.0f} MiB).")
        for r in sorted(met, key=lambda r: -r["ratio_wall"]):
            lines.append(f"- {r['key']}: {r['ratio_wall']:.2f}x wall, {r['ratio_cpu']:.2f}x "
                         f"CPU, J {r['jaccard_exact']:.3f}")
    else:
        lines.append("No setting meets 'ratio >= 2 and Jaccard >= 0.95' on both wall-clock "
                     "and CPU time.")
    peer = next(r for r in rows if r["key"] == report["peer_key"])
    lines += ["", "## Notes", "",
              f"- The peer's mask against the project's exact one: Jaccard "
              f"{peer['jaccard_exact']:.3f} (its scores weight every client 1/n and every "
              "batch of 15 alike, the last, shorter one included; it keeps only entries "
              "strictly above the threshold it picks by argmin |cumsum - gamma*total|).",
              f"- Retained samples: {report['sample_ids']}.",
              "- Per-tensor Jaccard indices are in results.json (`jaccard_exact_by_tensor`): "
              "fc1.weight holds 95 % of the parameters and dominates the overall index.",
              "- Masks that differed between rounds (unseeded draws; J exact is then the "
              "median over rounds, range in results.json): "
              + (", ".join(f"{r['key']} (J {min(r['jaccard_exact_rounds']):.3f}-"
                           f"{max(r['jaccard_exact_rounds']):.3f})"
                           for r in rows if not r["mask_stable"]) or "none") + ".",
              "- Clients run one after another on this one machine, so the times are the "
              "whole federation's curvature compute; in a deployment each client computes "
              "its own part in parallel."]
    return "\n".join(lines) + "\n"


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def peer_commit(peer_dir: Path) -> str:
    commit_file = peer_dir / "COMMIT"
    if commit_file.is_file():
        return commit_file.read_text().strip()
    try:
        return subprocess.run(["git", "-C", str(peer_dir), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients-samples", type=int, default=800,
                        help="samples per client (800: each client's whole partition)")
    parser.add_argument("--settings", nargs="+", default=["full"],
                        help="full, extra, few, or ESTIMATOR[:MC]:RETAIN:BATCH ...")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--peer-dir", type=Path, default=Path("/var/tmp/tis-peer"),
                        help="checkout of github.com/lorenzomanini/FedUnlearn-PE (its "
                             "fisherunlearn package; tqdm under deps/ if not installed)")
    parser.add_argument("--peer-mc", action="store_true",
                        help="also time the peer's code with method='diag_ggn_mc'")
    parser.add_argument("--out", default="bench/tis_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # BackPACK through the peer's code warns on every batch that the input needs no
    # gradient (harmless: BackPACK needs only the output gradients; the project's own
    # code silences the same warning).
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    command = (f".venv/bin/python bench/tis_speed.py --clients-samples {args.clients_samples}"
               f" --settings {' '.join(args.settings)} --repeats {args.repeats} --threads "
               f"{args.threads} --epochs {args.epochs} --seed {args.seed} --gamma {args.gamma}"
               f" --peer-dir {args.peer_dir}" + (" --peer-mc" if args.peer_mc else "")
               + f" --out {args.out}")
    settings: list[Setting] = []
    for name in args.settings:
        for s in settings_named(name):
            if s not in settings:
                settings.append(s)
    reference = Setting(*REFERENCE)
    if reference not in settings:
        settings.insert(0, reference)

    peer = load_peer(args.peer_dir)
    ids_note = check_sample_ids()
    clients, fed = build_clients(args.clients_samples, args.seed)
    owned = int(torch.bincount(clients[TARGET].forget[1]).argmax())
    splits = fed.splits
    model = seeded_model("cnn_nonorm", splits.num_classes, splits.in_shape, args.seed)
    x_all = torch.cat([client_data(c)[0] for c in clients])
    y_all = torch.cat([client_data(c)[1] for c in clients])
    print(f"training cnn_nonorm on {len(x_all)} samples, {args.epochs} epochs", flush=True)
    train(model, x_all, y_all, epochs=args.epochs, batch_size=32, lr=0.01, momentum=0.9,
          device=torch.device("cpu"), seed=args.seed)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(splits.test.images).argmax(1) == splits.test.labels).double()
                         .mean())
    print(f"test accuracy {accuracy:.3f}", flush=True)

    pipelines: dict[str, tuple[dict, Callable[[list[Client]], tuple[dict, dict]]]] = {}
    peer_key = "peer diag_ggn b15"
    pipelines[peer_key] = (
        {"kind": "peer", "estimator": "diag_ggn (DiagGGNExact)", "mc_samples": 1,
         "retain_samples": 0, "batch_size": PEER_BATCH},
        lambda cl: peer_pipeline(peer, model, cl, args.gamma))
    if args.peer_mc:
        pipelines["peer diag_ggn_mc b15"] = (
            {"kind": "peer", "estimator": "diag_ggn_mc (DiagGGNMC)", "mc_samples": 1,
             "retain_samples": 0, "batch_size": PEER_BATCH},
            lambda cl: peer_pipeline(peer, model, cl, args.gamma, method="diag_ggn_mc"))
    for s in settings:
        pipelines[s.label] = (
            {"kind": "project", **asdict(s)},
            lambda cl, s=s: project_pipeline(model, cl, s, args.gamma, args.seed))

    # Warm-up: every pipeline once on 16 samples per client (lazy initialisations).
    tiny = [Client(forget=(c.forget[0][:16], c.forget[1][:16]),
                   retain=(c.retain[0][:16], c.retain[1][:16])) for c in clients]
    for _, run in pipelines.values():
        run(tiny)
    rows = {key: {"key": key, **meta, "runs": []} for key, (meta, _) in pipelines.items()}
    masks: dict[str, dict[str, Tensor]] = {}
    round_masks: dict[str, list[dict[str, Tensor]]] = {key: [] for key in pipelines}
    keys = list(pipelines)
    load_before = load_average()
    for round_ in range(args.repeats):
        shift = (round_ * len(keys)) // max(1, args.repeats)
        for key in keys[shift:] + keys[:shift]:
            mask, measured = timed(lambda key=key: pipelines[key][1](clients))
            rows[key]["runs"].append(measured)
            round_masks[key].append(mask)
            masks.setdefault(key, mask)
            print(f"round {round_ + 1}/{args.repeats} {key}: {measured['wall_s']:.2f} s wall, "
                  f"{measured['cpu_s']:.2f} s CPU, peak {measured['peak_mib']:.0f} MiB",
                  flush=True)
    load_after = load_average()
    exact = masks[reference.label]
    for key, row in rows.items():
        # The first round's mask; a pipeline whose draws are not seeded (the peer's
        # diag_ggn_mc uses the global RNG) gets the median over rounds, and the range.
        row["mask_stable"] = all(same_mask(masks[key], m) for m in round_masks[key])
        row["jaccard_exact_rounds"] = [jaccard(m, exact) for m in round_masks[key]]
        row["jaccard_exact"] = median(row["jaccard_exact_rounds"])
        row["jaccard_peer"] = jaccard(masks[key], masks[peer_key])
        row["reset_share"] = reset_share(masks[key])
        row["jaccard_exact_by_tensor"] = {n: jaccard({n: masks[key][n]}, {n: exact[n]})
                                          for n in exact}
    summarize(rows, peer_key)
    report = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__, "backpack": importlib.metadata.version("backpack-for-pytorch"),
        "threads": args.threads, "load_before": load_before, "load_after": load_after,
        "peer": {"repo": "github.com/lorenzomanini/FedUnlearn-PE",
                 "commit": peer_commit(args.peer_dir), "dir": str(args.peer_dir),
                 "call": "compute_client_information(0, model, CrossEntropyLoss(), datasets, "
                         "method='diag_ggn', use_converter=False) with INFO_BATCH_SIZE=15; "
                         "find_informative_params(info, 'information', 100*gamma)"},
        "clients_samples": args.clients_samples, "epochs": args.epochs, "seed": args.seed,
        "gamma": args.gamma, "repeats": args.repeats, "owned_class": owned,
        "test_accuracy": accuracy, "sample_ids": ids_note,
        "peer_key": peer_key, "reference": reference.label,
        "rows": list(rows.values()),
    }
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
