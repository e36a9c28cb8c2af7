"""Deployment: real SuperLink and SuperNode processes talking gRPC.

:class:`LocalCluster` starts a SuperLink and N SuperNodes on one host (each in
its own process group, so that stopping a service also stops the children it
forked), :func:`submit` runs the Flower app on any SuperLink with ``flwr run``
and reads the run's final status, since ``flwr run`` exits 0 even when the
ServerApp fails. On several machines, start the same services by hand (README,
"Deployment") and use :func:`submit` or ``flwr run`` alone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from omegaconf import DictConfig

LOG = logging.getLogger("fedunlearn")
APP_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "fedunlearn-local"


class DeploymentError(RuntimeError):
    """A service failed to start, or the run did not complete."""


@dataclass
class Service:
    """A started process, the leader of its own process group."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    def tail(self, lines: int = 5) -> str:
        """The last lines of the service's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def group_alive(self) -> bool:
        """Whether any process of the service's process group still exists."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left, wait until it is empty.

        Children (``flower-superexec``, client-app processes) share the group and
        may outlive the leader by seconds, so the group, not the pid, is waited on.
        """
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while self.group_alive() and time.monotonic() < deadline:
                self.proc.poll()  # reap the leader once it exits
                time.sleep(0.1)
            if not self.group_alive():
                break
        self.proc.poll()


def service_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's processes: our FLWR_HOME, this venv's bin on PATH.

    The SuperLink starts ``flower-superexec`` by name, so it must find the one of
    the interpreter that runs us.
    """
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def wait_for_port(host: str, port: int, service: Service, timeout: float = 60.0) -> None:
    """Block until ``host:port`` accepts connections.

    Raises
    ------
    DeploymentError
        When the service exits first or the port stays closed for ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise DeploymentError(
                f"{service.name} exited with code {service.proc.returncode}: {service.tail()}"
            )
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise DeploymentError(f"{service.name} did not open {host}:{port} within {timeout:.0f} s")


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (the OS picks them)."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((host, 0))
        socks.append(sock)
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


@dataclass
class LocalCluster:
    """A SuperLink and ``num_nodes`` SuperNodes on one host, stopped on exit.

    Parameters
    ----------
    runtime : DictConfig
        ``cfg.runtime`` of the deployment runtime (host and ports).
    num_nodes : int
        SuperNodes to start; node i gets ``partition-id=i``.
    home : Path
        FLWR_HOME for every process and the CLI; logs go to ``home/logs``.
    """

    runtime: DictConfig
    num_nodes: int
    home: Path
    services: list[Service] = field(default_factory=list)

    def outbox(self, node: int) -> Path:
        """Node ``node``'s request outbox (``fedunlearn forget --outbox`` writes it)."""
        return outbox_path(self.home, node)

    @property
    def control_address(self) -> str:
        """Where ``flwr`` reaches the SuperLink's Control API."""
        return f"{self.runtime.host}:{self.runtime.superlink_port}"

    def _start(self, name: str, argv: list[str]) -> Service:
        log_path = self.home / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=service_env(self.home), start_new_session=True,
            )
        service = Service(name, proc, log_path)
        self.services.append(service)
        return service

    def start(self) -> LocalCluster:
        """Start the SuperLink, wait for its ports, then start the SuperNodes."""
        rt = self.runtime
        host = str(rt.host)
        ports = [rt.superlink_port] + [
            rt.clientappio_base_port + i for i in range(self.num_nodes)
        ]
        busy = [p for p in ports if not port_free(host, int(p))]
        if busy:
            raise DeploymentError(f"port(s) {busy} on {host} are in use; "
                                  "set runtime.*_port to free ones")
        write_connection(self.home, CONNECTION, self.control_address)
        link = self._start("superlink", [
            "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
            "--host", host, "--port", str(rt.superlink_port),
        ])
        wait_for_port(host, int(rt.superlink_port), link)
        for i in range(self.num_nodes):
            self._start(f"supernode-{i}", [
                "flower-supernode", "--insecure",
                "--superlink", self.control_address,
                "--host", host, "--port", str(rt.clientappio_base_port + i),
                # Node-config values are TOML: a path must be a quoted string.
                "--node-config", f'partition-id={i} num-partitions={self.num_nodes} '
                                 f'outbox="{self.outbox(i)}"',
            ])
        return self

    def stop(self) -> None:
        """Stop every service this cluster started, SuperNodes first."""
        for service in reversed(self.services):
            service.stop()
        self.services.clear()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def outbox_path(home: Path, node: int) -> Path:
    """Where the local cluster's SuperNode ``node`` keeps its request outbox."""
    return home / "outbox" / f"node-{node}.sqlite"


def write_connection(home: Path, name: str, address: str) -> Path:
    """Write FLWR_HOME/config.toml with one insecure SuperLink connection."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(tomli_w.dumps(
        {"superlink": {"default": name, name: {"address": address, "insecure": True}}}
    ))
    return path


def _flwr(args: list[str], home: Path, timeout: float) -> str:
    done = subprocess.run(["flwr", *args], capture_output=True, text=True,
                          env=service_env(home), timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise DeploymentError(f"flwr {args[0]} failed ({done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


def _json_tail(text: str) -> dict:
    """The JSON object printed last by a ``--format json`` flwr command."""
    start = text.find("{")
    if start < 0:
        raise DeploymentError(f"no JSON in flwr output: {text.strip()[-300:]}")
    return json.loads(text[start:])


def submit(
    home: Path, run_config: dict[str, str], *, connection: str = CONNECTION,
    timeout: float = 1800.0, poll: float = 2.0,
) -> tuple[int, str]:
    """``flwr run`` the app, wait for the run to finish, return (run id, status).

    The status is the SuperLink's (``finished:completed``, ``finished:failed``,
    ...), read with ``flwr ls``, because ``flwr run`` exits 0 either way.
    """
    config_path = home / "run-config.toml"
    config_path.write_text(tomli_w.dumps(run_config))
    out = _flwr(["run", str(APP_DIR), connection, "--run-config", str(config_path),
                 "--format", "json"], home, timeout=300)
    run_id = int(_json_tail(out)["run-id"])
    LOG.info("submitted run %d to %s", run_id, connection)
    deadline = time.monotonic() + timeout
    while True:
        listing = _json_tail(_flwr(["ls", connection, "--run-id", str(run_id),
                                    "--format", "json"], home, timeout=60))
        status = str(listing["runs"][0]["status"])
        if status.startswith("finished"):
            return run_id, status
        if time.monotonic() > deadline:
            raise DeploymentError(f"run {run_id} still '{status}' after {timeout:.0f} s")
        time.sleep(poll)


def run_logs(home: Path, run_id: int, connection: str = CONNECTION) -> str:
    """The ServerApp's log of ``run_id`` as the SuperLink kept it."""
    return _flwr(["log", str(run_id), connection, "--show"], home, timeout=120)


def deploy(cfg: DictConfig, overrides: list[str], out_dir: Path, job: str = "run") -> dict:
    """Start a local cluster, run the app over gRPC, stop the cluster.

    Parameters
    ----------
    cfg : DictConfig
        The composed config (runtime must be ``deployment``).
    overrides : list of str
        The Hydra overrides that composed ``cfg``; the ServerApp recomposes from them.
    out_dir : Path
        Results folder (absolute paths are passed to the ServerApp).
    job : str
        ``run`` (train, answer requests, report) or ``train``.

    Raises
    ------
    DeploymentError
        When a service fails or the run does not finish as ``finished:completed``.
    """
    out_dir = out_dir.resolve()
    home = Path(cfg.runtime.flwr_home).resolve() if cfg.runtime.flwr_home else out_dir / "flwr"
    # The ServerApp runs in another working directory: pin relative paths here.
    pinned = [o for o in overrides if not o.startswith("cache_dir=")]
    pinned.append(f"cache_dir={Path(cfg.cache_dir).resolve()}")
    started = time.perf_counter()
    with LocalCluster(cfg.runtime, int(cfg.num_clients), home) as cluster:
        # Process-group ids of every service, so that callers can check none survives.
        groups = {service.name: service.proc.pid for service in cluster.services}
        LOG.info("SuperLink and %d SuperNodes up at %s (logs in %s)",
                 cfg.num_clients, cluster.control_address, home / "logs")
        run_id, status = submit(
            home, {"overrides": " ".join(pinned), "output-dir": str(out_dir), "job": job},
            timeout=float(cfg.runtime.run_timeout),
        )
        logs = run_logs(home, run_id)
    (out_dir / "serverapp.log").write_text(logs)
    result = {"run_id": run_id, "status": status, "seconds": time.perf_counter() - started,
              "process_groups": groups}
    (out_dir / "deployment.json").write_text(json.dumps(result, indent=2))
    if status != "finished:completed":
        last = " | ".join(logs.strip().splitlines()[-3:])
        raise DeploymentError(f"run {run_id} ended '{status}': {last}")
    return result
