"""A network sandbox for multi-host tests: Linux network namespaces on one machine.

:class:`Sandbox` makes one namespace per host, each with an ``eth0`` joined by a veth
pair to a bridge in a switch namespace of its own, and addresses from 198.18.0.0/15
(reserved for network benchmarks, RFC 2544), so that nothing it does touches the
machine's own interfaces or addresses. It starts processes inside a host (each the
leader of its own process group), injects faults (``tc netem`` where the kernel has it,
link down and up) and, on :meth:`close`, stops every process group it started and
deletes every namespace (with them their veths and the bridge), even after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

from fedunlearn.runtime.processes import group_members, stop_groups

__all__ = ["Sandbox", "SandboxUnavailable"]

NETWORK = "198.18.0"  # /24 inside 198.18.0.0/15


class SandboxUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``): the reason, for a skip."""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


class Sandbox:
    """Hosts in network namespaces on one bridge; see the module docstring."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise SandboxUnavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise SandboxUnavailable("no `ip` command (iproute2)")
        self.tag = uuid.uuid4().hex[:6]
        self.switch = f"fu{self.tag}-sw"
        self.hosts: dict[str, str] = {}  # name -> address
        self.namespaces: list[str] = []
        self.groups: list[int] = []
        self.procs: list[subprocess.Popen] = []
        try:
            self._add_namespace(self.switch)
        except subprocess.CalledProcessError as exc:
            raise SandboxUnavailable(f"`ip netns add` failed: {exc.stderr.strip()}") from exc
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def namespace(self, host: str) -> str:
        """The namespace of ``host``."""
        return f"fu{self.tag}-{host}"

    def add_host(self, host: str) -> str:
        """A new host on the bridge; returns its address (198.18.0.N)."""
        ns = self.namespace(host)
        self._add_namespace(ns)
        address = f"{NETWORK}.{len(self.hosts) + 1}"
        port = f"v{self.tag}{len(self.hosts)}"
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self.hosts[host] = address
        return address

    def argv(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def spawn(self, host: str, argv: list[str], log: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` in ``host`` as the leader of a new process group."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            proc = subprocess.Popen(self.argv(host, argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.groups.append(proc.pid)
        self.procs.append(proc)
        return proc

    def run(self, host: str, argv: list[str], env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``host`` to its end."""
        return subprocess.run(self.argv(host, argv), capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def netem(self, host: str, spec: str) -> str | None:
        """``tc qdisc add dev eth0 root netem SPEC`` in ``host``; None when done, else why
        not (a kernel without ``sch_netem``)."""
        done = subprocess.run(self.argv(host, ["tc", "qdisc", "add", "dev", "eth0", "root",
                                               "netem", *spec.split()]),
                              capture_output=True, text=True)
        return None if done.returncode == 0 else (done.stderr or done.stdout).strip()

    def link(self, host: str, up: bool) -> None:
        """Cut ``host`` off the network (its eth0 down) or restore it."""
        _ip("-n", self.namespace(host), "link", "set", "eth0", "up" if up else "down")

    def close(self) -> list[str]:
        """Stop every process group started here, then delete every namespace; returns
        the namespaces of this sandbox still present (none, unless deletion failed)."""
        try:
            stop_groups(list(self.groups), grace=5.0, leaders=self.procs)
        finally:
            for ns in reversed(self.namespaces):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [ns for ns in self.namespaces if ns in listed.split()]

    def alive(self) -> list[int]:
        """Process groups started here that still have a live member."""
        return [pgid for pgid in self.groups if group_members(pgid)]
