"""A supervised SuperLink and SuperNodes on one host: :class:`LocalCluster`.

The cluster starts a SuperLink (its state in a database file, so that a restart keeps
runs and nodes) and N SuperNodes, each the leader of its own process group, and
supervises them: a watcher thread restarts a service whose process exited unexpectedly.
On several machines, start the same services by hand (README, "Deployment").

What Flower 1.42 does when the SuperLink dies (observed on this project's machines):
``flower-superlink`` starts ``flower-superexec`` in a new session (a process group of
its own) with ``--parent-pid``; that SuperExec starts each run's ``flwr-serverapp`` in
its group, again with ``--parent-pid``. Both poll their parent and exit within seconds
of the SuperLink's death, so a killed SuperLink always takes the running ServerApp with
it. Restarted on the same ``--database``, the SuperLink keeps its runs and nodes: the
SuperNodes (which retry forever) reconnect without a 401, and the lost run stays
``running`` until its task heartbeat expires (about 60 s: 30 s x patience 2), then
ends ``finished:failed`` with the details "No heartbeat received from the task". A run
not yet ``running`` (pending, starting) is launched again by the new SuperExec.
:meth:`LocalCluster.run_lost` tells :func:`~fedunlearn.runtime.flwr_cli.submit` about
the first case without waiting for the heartbeat.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from fedunlearn.pki import CredentialsError, Layout, parse_addresses, write_credentials
from fedunlearn.runtime.flwr_cli import CONNECTION, register_node, write_connection
from fedunlearn.runtime.processes import (
    DeploymentError,
    Service,
    detached_groups,
    port_free,
    service_env,
    stop_groups,
    wait_for_port,
)

__all__ = ["STATE_FILE", "LocalCluster", "outbox_path", "prepare_state_file"]

LOG = logging.getLogger("fedunlearn")
# Where LocalCluster keeps the SuperLink's database when runtime.state_file is null.
STATE_FILE = Path("state") / "superlink.db"
# Seconds between the watcher's looks at the services.
WATCH_INTERVAL = 0.5



def prepare_state_file(path: Path) -> Path:
    """Make the SuperLink's database file private: the file 0600, a new folder 0700.

    An empty file is a valid empty SQLite database, and SQLite gives its ``-wal`` and
    ``-shm`` files the database file's mode, so creating it here, 0600, before the
    SuperLink opens it keeps all three private. An existing folder keeps its mode (it
    may be shared, e.g. ``/tmp``); a warning says when others may enter it.
    """
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    elif folder.stat().st_mode & 0o077:
        LOG.warning("the SuperLink's state folder %s is open to other users (mode %s)",
                    folder, oct(stat.S_IMODE(folder.stat().st_mode)))
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if part.exists():
            part.chmod(0o600)  # tighten a file an older run left readable
    return path


def _utc(stamp: object) -> float | None:
    """A ``flwr ls`` time (``2026-12-01 05:55:32Z``) as Unix time; None when empty/unknown."""
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class LocalCluster:
    """A supervised SuperLink and ``num_nodes`` SuperNodes on one host, stopped on exit.

    The SuperLink keeps its state in ``runtime.state_file`` (a SQLite file), so that a
    restarted SuperLink still knows the runs and the SuperNodes. A watcher thread
    restarts, with the same arguments and each in a new process group, a service whose
    process exited while the cluster was up (at most ``runtime.max_restarts`` times
    each); :attr:`restarts` lists them. :meth:`stop` stops every process group the
    cluster ever started, including those the SuperLink's SuperExec made (the
    ServerApps), after the watcher has stopped.

    Parameters
    ----------
    runtime : DictConfig
        ``cfg.runtime`` of the deployment runtime (host, ports, state file, restarts).
    num_nodes : int
        SuperNodes to start; node i gets ``partition-id=i``.
    home : Path
        FLWR_HOME for every process and the CLI; logs go to ``home/logs``.
    """

    runtime: DictConfig
    num_nodes: int
    home: Path
    # The current process of each service, by name.
    services: dict[str, Service] = field(default_factory=dict)
    # Every process group ever started, by the service that started it (restarts and
    # groups its children detached included), in start order.
    groups: dict[str, list[int]] = field(default_factory=dict)
    # One record per restart: service, exit_code, at_s (since start), died_at (Unix
    # time the exit was seen), pgid (of the new process).
    restarts: list[dict] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _halt: threading.Event = field(default_factory=threading.Event, repr=False)
    _watcher: threading.Thread | None = field(default=None, repr=False)
    _given_up: set[str] = field(default_factory=set, repr=False)
    # Monotonic time before which a service is not restarted again (runtime.restart_spacing).
    _not_before: dict[str, float] = field(default_factory=dict, repr=False)
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def outbox(self, node: int) -> Path:
        """Node ``node``'s request outbox (``fedunlearn forget --outbox`` writes it)."""
        return outbox_path(self.home, node)

    @property
    def control_address(self) -> str:
        """Where ``flwr`` reaches the SuperLink's Control API."""
        return f"{self.runtime.host}:{self.runtime.superlink_port}"

    @property
    def state_file(self) -> Path:
        """The SuperLink's database: ``runtime.state_file``, or ``home/state/superlink.db``."""
        configured = self.runtime.state_file
        return Path(configured).expanduser().resolve() if configured else self.home / STATE_FILE

    def _spawn(self, name: str, argv: list[str], port: int, note: str | None = None) -> Service:
        """Start ``argv`` as the leader of a new process group; record the group.

        The first start truncates the service's log; a restart appends to it after
        ``note``, so that the log tells the whole story.
        """
        log_path = self.home / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a" if note else "w") as log_file:
            if note:
                log_file.write(f"\n---- fedunlearn: {note} ----\n")
                log_file.flush()
            proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env(), start_new_session=True,
            )
        service = Service(name, argv, port, proc, log_path)
        self.services[name] = service
        self.groups.setdefault(name, []).append(proc.pid)
        return service

    def _env(self) -> dict[str, str]:
        """Every service's environment; the SuperExecs Flower starts (the SuperLink's,
        and a stock SuperNode's) poll for tasks every ``runtime.task_poll_interval`` s.

        The SuperNodes share this host's cores: each client app computes with
        :meth:`node_threads` threads (``OMP_NUM_THREADS``, read by torch in every
        process the node starts). Left at torch's default, N nodes training at once run
        N x cores spinning OpenMP threads on the cores, several times slower in all.
        """
        env = service_env(self.home)
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(float(self.runtime.task_poll_interval))
        env["OMP_NUM_THREADS"] = str(self.node_threads)
        return env

    @property
    def node_threads(self) -> int:
        """Threads per client app: ``runtime.node_threads``, or by default this host's
        cores shared out among the SuperNodes (at least 1)."""
        configured = self.runtime.get("node_threads")
        if configured is not None:
            return int(configured)
        return max(1, (os.cpu_count() or 1) // max(1, self.num_nodes))

    def _adopt(self, service: Service, wait: float = 0.0) -> None:
        """Record the process groups ``service``'s children detached (the SuperLink's
        SuperExec), looking for up to ``wait`` s until there is one."""
        deadline = time.monotonic() + wait
        while True:
            found = detached_groups(service.proc.pid)
            with self._lock:
                known = self.groups.setdefault(service.name, [])
                known.extend(sorted(found - set(known)))
            if found or time.monotonic() >= deadline or self._halt.is_set():
                return
            time.sleep(0.2)

    def _ready(self, service: Service) -> None:
        """Wait until ``service`` listens; for the SuperLink, find its SuperExec's group."""
        wait_for_port(str(self.runtime.host), service.port, service, abort=self._halt)
        if service.name == "superlink":
            # The SuperLink starts its SuperExec before it opens its port.
            self._adopt(service, wait=10.0)

    @property
    def secure(self) -> bool:
        """TLS and SuperNode authentication (unless ``runtime.insecure``)."""
        return not bool(self.runtime.get("insecure", False))

    @property
    def credentials(self) -> Layout:
        """Where the cluster's CA, SuperLink certificate and SuperNode keys live."""
        return Layout(self.home / "certs")

    def _make_credentials(self) -> None:
        """Create the credentials on first start (kept for restarts and later runs: the
        SuperLink's database holds the registered keys)."""
        creds = self.credentials
        wanted = [creds.ca_cert, creds.superlink_cert, creds.superlink_key,
                  *(creds.node_key(i) for i in range(self.num_nodes))]
        if all(path.exists() for path in wanted):
            return
        host = str(self.runtime.host)
        try:  # the SuperLink's certificate names the address everyone connects to
            names, addresses = ("localhost",), parse_addresses(host)
        except CredentialsError:  # a host name
            names, addresses = ("localhost", host), parse_addresses("127.0.0.1")
        write_credentials(creds.root, names=names, addresses=addresses,
                          nodes=self.num_nodes, force=True)

    def _superlink_argv(self) -> list[str]:
        rt = self.runtime
        creds = self.credentials
        security = ([
            "--ssl-ca-certfile", str(creds.ca_cert), "--ssl-certfile", str(creds.superlink_cert),
            "--ssl-keyfile", str(creds.superlink_key), "--enable-supernode-auth",
        ] if self.secure else ["--insecure"])
        return [
            "flower-superlink", *security, "--disable-runtime-dependency-installation",
            "--host", str(rt.host), "--port", str(rt.superlink_port),
            "--database", str(self.state_file),
        ]

    def _supernode_argv(self, i: int) -> list[str]:
        rt = self.runtime
        creds = self.credentials
        security = (["--root-certificates", str(creds.ca_cert),
                     "--auth-supernode-private-key", str(creds.node_key(i))]
                    if self.secure else ["--insecure"])
        # The warm executor takes the place of the SuperExec the node would start.
        isolation = ["--isolation", "process"] if self.warm else []
        return [
            "flower-supernode", *security, *isolation,
            "--superlink", self.control_address,
            "--host", str(rt.host), "--port", str(rt.clientappio_base_port + i),
            # Node-config values are TOML: a path must be a quoted string.
            "--node-config", f'partition-id={i} num-partitions={self.num_nodes} '
                             f'outbox="{self.outbox(i)}"',
        ]

    @property
    def warm(self) -> bool:
        """Whether SuperNodes run their messages in the warm executor (``runtime.executor``)."""
        kind = str(self.runtime.get("executor", "stock"))
        if kind not in ("warm", "stock"):
            raise DeploymentError(f"runtime.executor must be 'warm' or 'stock', got '{kind}'")
        return kind == "warm"

    def _executor_argv(self, i: int) -> list[str]:
        """``fedunlearn node-executor`` beside SuperNode ``i`` (its Runtime API is plain
        HTTP on the node's loopback, as with Flower's own SuperExec)."""
        rt = self.runtime
        return [
            str(Path(sys.executable).parent / "fedunlearn"), "node-executor", "--insecure",
            "--runtime-api-address", f"{rt.host}:{int(rt.clientappio_base_port) + i}",
            "--poll-interval", str(float(rt.task_poll_interval)),
        ]

    def start(self) -> LocalCluster:
        """Start the SuperLink, wait for its port, start the SuperNodes and the watcher."""
        rt = self.runtime
        host = str(rt.host)
        ports = [rt.superlink_port] + [
            rt.clientappio_base_port + i for i in range(self.num_nodes)
        ]
        busy = [p for p in ports if not port_free(host, int(p))]
        if busy:
            raise DeploymentError(f"port(s) {busy} on {host} are in use; "
                                  "set runtime.*_port to free ones")
        if self.secure:
            self._make_credentials()
        write_connection(self.home, CONNECTION, self.control_address,
                         self.credentials.ca_cert if self.secure else None)
        prepare_state_file(self.state_file)
        self._t0 = time.monotonic()
        with self._lock:
            link = self._spawn("superlink", self._superlink_argv(), int(rt.superlink_port))
        self._ready(link)
        if self.secure:
            # Only registered keys may join: every node's, before it starts.
            for i in range(self.num_nodes):
                register_node(self.home, self.credentials.node_public_key(i))
        with self._lock:
            for i in range(self.num_nodes):
                self._spawn(f"supernode-{i}", self._supernode_argv(i),
                            int(rt.clientappio_base_port) + i)
                if self.warm:
                    self._spawn(f"executor-{i}", self._executor_argv(i),
                                int(rt.clientappio_base_port) + i)
        self._watcher = threading.Thread(target=self._watch, name="fedunlearn-watcher",
                                         daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        """Restart every service whose process exited, until :meth:`stop`."""
        while not self._halt.wait(WATCH_INTERVAL):
            for service in list(self.services.values()):
                if service.proc.poll() is None or self._halt.is_set():
                    continue
                if time.monotonic() < self._not_before.get(service.name, 0.0):
                    continue
                try:
                    self._restart(service)
                except DeploymentError as exc:  # the next look tries again, within the bound
                    LOG.error("restarting %s failed: %s", service.name, exc)
                except Exception:  # keep supervising the others whatever happened
                    LOG.exception("restarting %s failed", service.name)

    def _restart(self, service: Service) -> None:
        """Start ``service`` again as it was, after stopping what its last process left."""
        code = service.proc.returncode
        done = sum(r["service"] == service.name for r in self.restarts)
        limit = int(self.runtime.max_restarts)
        if done >= limit:
            if service.name not in self._given_up:
                self._given_up.add(service.name)
                LOG.error("%s exited (code %s) and was restarted %d times already "
                          "(runtime.max_restarts): leaving it down", service.name, code, done)
            return
        died_at = time.time()
        LOG.warning("%s exited unexpectedly (code %s); restarting it (%d of at most %d)",
                    service.name, code, done + 1, limit)
        # What the dead process left goes first: a SuperNode's client apps, the
        # SuperLink's SuperExec and the run's ServerApp. No stale process then talks
        # to the new one, and submit() may take the ServerApp for dead (run_lost).
        self._adopt(service)
        stop_groups(list(self.groups[service.name]), grace=3.0, leaders=[service.proc])
        with self._lock:
            if self._halt.is_set():  # stop() began meanwhile: start nothing new
                return
            new = self._spawn(service.name, service.argv, service.port,
                              note=f"restarted after exit code {code}")
            # An authenticated SuperNode killed hard stays "online" at the SuperLink for
            # up to a minute, and a new process with its key is refused meanwhile: space
            # the next restart out instead of spending every restart at once.
            self._not_before[service.name] = (time.monotonic()
                                              + float(self.runtime.restart_spacing))
            self.restarts.append({
                "service": service.name, "exit_code": code,
                "at_s": round(time.monotonic() - self._t0, 1), "died_at": died_at,
                "pgid": new.proc.pid,
            })
        self._ready(new)

    def run_lost(self, run: dict) -> bool:
        """Whether ``run`` (a ``flwr ls`` record) is ``running`` without a ServerApp.

        True when the SuperLink was restarted after the run went ``running``: its
        ServerApp died with the old SuperLink's SuperExec (and the watcher stopped
        what was left), though Flower shows the run ``running`` until its heartbeat
        expires. A run that went ``running`` after the restart was launched by the new
        SuperLink and is alive.
        """
        if run.get("status") != "running":
            return False
        running_at = _utc(run.get("running-at"))
        if running_at is None:
            return False
        with self._lock:
            deaths = [r["died_at"] for r in self.restarts if r["service"] == "superlink"]
        # One second of slack: running-at is rounded to the second.
        return any(died > running_at + 1.0 for died in deaths)

    def process_groups(self) -> dict[str, list[int]]:
        """Every process group the cluster started, by service (a copy)."""
        with self._lock:
            return {name: list(pgids) for name, pgids in self.groups.items()}

    def stop(self) -> None:
        """Stop the watcher, then every process group ever started, the SuperNodes first.

        The watcher is joined first, so that it cannot start a process after the
        groups were stopped; groups the SuperLink's children detached since the last
        look are found again before the kill.
        """
        self._halt.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        for service in list(self.services.values()):
            self._adopt(service)
        leaders = [service.proc for service in self.services.values()]
        groups = self.process_groups()
        link = groups.pop("superlink", [])
        # The SuperNodes first, together, while the SuperLink can still take their
        # goodbyes; then the SuperLink with its SuperExec and the ServerApps.
        stop_groups([pgid for pgids in groups.values() for pgid in pgids], leaders=leaders)
        stop_groups(link, leaders=leaders)
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
