"""Processes on one host: process groups read from Linux's ``/proc``, and services.

Every Flower process this project starts (:class:`~fedunlearn.runtime.cluster.LocalCluster`)
leads a process group of its own, so that stopping a service also stops the children it
forked; the SuperLink's children even make groups of their own (:func:`detached_groups`).
Here are the helpers that find, signal and wait on those groups, the :class:`Service`
record of one started process, its environment, and the port checks.

:class:`DeploymentError`, the one error of the deployment runtime, is defined here, in
the layer every other deployment module imports, and exported by
:mod:`fedunlearn.runtime.deployment`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedunlearn.errors import UserError

__all__ = [
    "DeploymentError", "Service", "descendants", "detached_groups", "free_ports", "group_members",
    "port_free", "service_env", "stop_group", "stop_groups", "wait_for_port",
]


# RuntimeError stays a base so that code catching it, as before UserError, still does.
class DeploymentError(UserError, RuntimeError):
    """A service failed to start, or the run did not complete."""


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """``(pid, state, ppid, pgid)`` of every process, read from Linux's ``/proc``."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                line = handle.read()
        except OSError:  # it exited meanwhile
            continue
        # The command name may hold spaces or ')': the fields follow its last ')'.
        fields = line[line.rindex(")") + 2:].split()
        yield int(entry.name), fields[0], int(fields[1]), int(fields[2])


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def descendants(root: int) -> list[int]:
    """Pids of ``root`` and every live process below it by parent pid, whatever their
    process group or session (Ray's GCS, raylet and workers below a simulation)."""
    children: dict[int, list[int]] = {}
    for pid, state, ppid, _ in _processes():
        if state not in ("Z", "X"):
            children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def group_members(pgid: int) -> list[int]:
    """Pids of the processes of process group ``pgid`` that are alive.

    Zombies are left out: they run nothing, and one re-parented to a slow init may
    linger for seconds after its group was killed. Without ``/proc`` (not Linux), a
    group that ``killpg(pgid, 0)`` reaches counts as ``[pgid]``.
    """
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    return [pid for pid, state, _, group in _processes()
            if group == pgid and state not in ("Z", "X")]


def detached_groups(leader: int) -> set[int]:
    """Process groups that the children of process ``leader`` made of their own.

    ``flower-superlink`` starts ``flower-superexec`` in a new session, and the run's
    ``flwr-serverapp`` lives in that SuperExec's group: stopping the SuperLink's group
    alone would leave them to exit by themselves. Such a child is found by its parent
    pid, or by ``--parent-pid LEADER`` in its arguments once the leader died and the
    child was re-parented.
    """
    if not os.path.isdir("/proc"):
        return set()
    found = set()
    for pid, state, ppid, pgid in _processes():
        # Only leaders of their own group (a new session or group) are candidates.
        if pgid != pid or pid == leader or state in ("Z", "X"):
            continue
        if ppid == leader:
            found.add(pid)
            continue
        argv = _cmdline(pid)
        pairs = zip(argv, argv[1:], strict=False)
        if any(a == "--parent-pid" and b == str(leader) for a, b in pairs):
            found.add(pid)
    return found


def stop_groups(
    pgids: list[int], grace: float = 10.0, leaders: Sequence[subprocess.Popen] = (),
) -> None:
    """SIGTERM the process groups ``pgids`` together, SIGKILL what is left after ``grace``
    s, wait until no process of them is alive.

    Children (``flower-superexec``, client apps) share a group and may outlive its
    leader by seconds, so the groups, not the pids, are waited on; they are signalled
    together because a SuperNode takes seconds to shut down. ``leaders``, our own
    children, are reaped on the way.
    """
    left = list(pgids)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pgid in left:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while True:
            for leader in leaders:
                leader.poll()
            left = [pgid for pgid in left if group_members(pgid)]
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not left:
            break
    for leader in leaders:
        leader.poll()


def stop_group(pgid: int, grace: float = 10.0, leader: subprocess.Popen | None = None) -> None:
    """Stop one process group (:func:`stop_groups`)."""
    stop_groups([pgid], grace, [leader] if leader is not None else [])


@dataclass
class Service:
    """A started process, the leader of its own process group.

    ``argv`` and ``port`` are kept so that the watcher can start it again as it was.
    """

    name: str
    argv: list[str]
    port: int
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
        """Whether any process of the service's process group is still alive."""
        return bool(group_members(self.proc.pid))

    def stop(self, grace: float = 10.0) -> None:
        """Stop the service's process group (:func:`stop_group`)."""
        stop_group(self.proc.pid, grace, self.proc)


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
    # Flower sends usage events to its servers unless told not to: a private
    # federation does not phone home (and every process exit would wait on it offline).
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return env


def wait_for_port(
    host: str, port: int, service: Service, timeout: float = 60.0,
    abort: threading.Event | None = None,
) -> None:
    """Block until ``host:port`` accepts connections (or ``abort`` is set).

    Raises
    ------
    DeploymentError
        When the service exits first or the port stays closed for ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if abort is not None and abort.is_set():
            return
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

