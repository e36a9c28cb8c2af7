"""Flower's supported simulation path: ``flwr run`` against a simulation SuperLink of our own.

:func:`simulate_with_flwr` is ``fedunlearn train|run|serve`` with ``runtime=simulation``
(``runtime.launch: flwr-run``, the default). It

1. starts ``flower-superlink --simulation`` on a free loopback port, the leader of a
   process group of its own, with runtime dependency installation off (the app runs in
   this environment; Flower would otherwise ``uv sync`` another torch for every run);
2. submits the project's app, the same ServerApp and ClientApp as deployment, with
   ``flwr run`` (:func:`~fedunlearn.runtime.flwr_cli.submit`): the run config carries the
   Hydra overrides and the absolute results folder, ``--federation-config`` the number
   of virtual clients and their Ray resources;
3. follows the ServerApp's log with ``flwr log --stream`` (its progress lines reach this
   command's stderr as in-process, and ``serverapp.log`` keeps them), learns the end from
   ``serverapp.done`` and reads the final status with ``flwr ls`` (``flwr run`` exits 0
   even when the ServerApp fails);
4. stops every process group below the SuperLink, found by parent pid before any is
   signalled: its SuperExec, ``flwr-simulation``, Ray's GCS, raylet, workers and agents
   (two of Ray's agents ignore SIGTERM: what is left after a grace gets SIGKILL).

Why not Flower's own ``:local:`` connection: it starts a SuperLink detached in its own
session with its output discarded, which outlives the job, on fixed ports shared by
every job of the machine (docs/simulation-paths.md).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fedunlearn import protocol as P
from fedunlearn.config import join_overrides
from fedunlearn.runtime.flwr_cli import (
    APP_DIR,
    CONNECTION,
    failure_reason,
    pinned_overrides,
    run_logs,
    submit,
    write_connection,
)
from fedunlearn.runtime.processes import (
    DeploymentError,
    Service,
    descendants,
    detached_groups,
    free_ports,
    service_env,
    stop_groups,
    wait_for_port,
)

__all__ = ["federation_config", "simulate_with_flwr"]

LOG = logging.getLogger("fedunlearn")
HOST = "127.0.0.1"


def federation_config(cfg: DictConfig) -> str:
    """``--federation-config`` of ``flwr run``: the virtual clients and Ray's resources."""
    rt = cfg.runtime
    parts = [f"num-supernodes={int(cfg.num_clients)}",
             f"client-resources-num-cpus={int(rt.client_cpus)}",
             f"client-resources-num-gpus={float(rt.client_gpus)}",
             "init-args-logging-level='ERROR'", "init-args-log-to-driver=false"]
    if rt.num_cpus is not None:
        parts.append(f"init-args-num-cpus={int(rt.num_cpus)}")
    return " ".join(parts)


class _LogStream:
    """Follows a run's ServerApp log with ``flwr log RUN --stream``: each line goes to
    this command's stderr as it comes (the job's progress, as in-process) and is kept."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def start(self, run_id: int) -> None:
        """Follow ``run_id`` (a resubmitted run replaces the one followed)."""
        self.finish(wait=0.0)
        self.proc = subprocess.Popen(
            ["flwr", "log", str(run_id), CONNECTION, "--stream"], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            env=service_env(self.home), start_new_session=True)
        self.thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self.thread.start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if "logstream" in line:  # the CLI's own "Starting logstream ..." line
                continue
            self.lines.append(line)
            sys.stderr.write(line)
            sys.stderr.flush()

    def finish(self, wait: float = 5.0) -> None:
        """Let the stream end by itself (it does when the run ends) for up to ``wait`` s,
        then stop its process group."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        stop_groups([self.proc.pid], grace=1.0, leaders=[self.proc])
        if self.thread is not None:
            self.thread.join(timeout=5.0)
        self.proc = None


def _start_superlink(home: Path) -> Service:
    """``flower-superlink --simulation`` on a free loopback port, in its own group."""
    (port,) = free_ports(1, HOST)
    argv = ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
            "--disable-runtime-dependency-installation", "--host", HOST, "--port", str(port)]
    env = service_env(home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    # Keep Ray's pre-2.56 device-variable behaviour without its warning on every run.
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    log_path = home / "logs" / "superlink.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    service = Service("superlink", argv, port, proc, log_path)
    try:
        wait_for_port(HOST, port, service)
    except BaseException:
        _stop(service)
        raise
    write_connection(home, CONNECTION, f"{HOST}:{port}")
    return service


def _stop(service: Service) -> list[int]:
    """Stop the SuperLink's group and every group below it; the groups stopped.

    The groups are collected first, by parent pid, while every parent is alive: a child
    re-parented to init after its parent died could no longer be told from a stranger.
    """
    pids = descendants(service.proc.pid)
    groups = {service.proc.pid} | detached_groups(service.proc.pid)
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgid(0))  # never our own
    stop_groups(sorted(groups), grace=5.0, leaders=[service.proc])
    return sorted(groups)


def _exit_on_sigterm() -> Any:
    """Turn SIGTERM into SystemExit (main thread only); the handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, _exit)


def simulate_with_flwr(cfg: DictConfig, overrides: list[str], out_dir: Path,
                       job: str = "run", *, app_dir: Path = APP_DIR) -> dict:
    """Run the job as a Flower simulation submitted with ``flwr run``; its record.

    Writes ``simulation.json`` (run id, status, seconds, the process groups stopped)
    and ``serverapp.log`` in ``out_dir``, whatever the outcome.

    Parameters
    ----------
    cfg : DictConfig
        The composed config (``runtime=simulation``).
    overrides : list of str
        The Hydra overrides that composed ``cfg``; the ServerApp recomposes from them.
    out_dir : Path
        Results folder (passed to the ServerApp as an absolute path).
    job : str
        ``run``, ``train`` or ``serve``.
    app_dir : Path
        The Flower app to submit (default: this project).

    Raises
    ------
    DeploymentError
        The SuperLink does not start, or the run does not end ``finished:completed``
        (the message ends with the ServerApp's own error, or its last log lines).
    """
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    home = out_dir / "flwr"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    pinned = pinned_overrides(overrides, cfg.cache_dir)
    started = time.perf_counter()
    run_id, status, logs, groups = None, "error", "", []
    stream = _LogStream(home)
    # SIGTERM (a `kill`, a CI timeout) would end this process without its `finally`,
    # leaving the SuperLink and Ray behind: make it an exit that stops them first.
    previous = _exit_on_sigterm()
    service = _start_superlink(home)
    try:
        LOG.info("simulation SuperLink up at %s:%d; %d virtual clients (logs in %s)", HOST,
                 service.port, cfg.num_clients, home / "logs")
        run_id, status = submit(
            home, {"overrides": join_overrides(pinned), "output-dir": str(out_dir), "job": job},
            timeout=float(cfg.runtime.run_timeout), resubmits=0, app_dir=app_dir,
            federation_config=federation_config(cfg), on_start=stream.start,
            done_file=out_dir / P.DONE_FILE, poll=0.5)
        stream.finish()
        logs = "".join(stream.lines)
        if not logs:  # the stream failed: ask once for the whole log
            try:
                logs = run_logs(home, run_id)
            except DeploymentError as exc:
                logs = f"(no log: {exc})\n"
    finally:
        stream.finish(wait=0.0)
        stopping = time.perf_counter()
        groups = _stop(service)
        stop_seconds = time.perf_counter() - stopping
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        (out_dir / "serverapp.log").write_text(logs)
        (out_dir / "simulation.json").write_text(json.dumps(
            {"run_id": run_id, "status": status, "seconds": time.perf_counter() - started,
             "stop_seconds": stop_seconds, "superlink_port": service.port,
             "process_groups_stopped": groups}, indent=2))
    if status != "finished:completed":
        raise DeploymentError(f"simulation run {run_id} ended '{status}': "
                              f"{failure_reason(out_dir / P.DONE_FILE, logs)}")
    return {"run_id": run_id, "status": status, "process_groups": groups}
